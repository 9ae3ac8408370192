#!/bin/sh
# Container start: serve the bundle $FASHIONREC_BUNDLES/current points at, and follow it when it moves.
# On an empty bundles volume the server starts anyway and stays not ready (/readyz 503) until the deployer
# activates a bundle: a pod never builds one itself (replicas starting together would race for it).
set -eu
exec fashionrec serve -p "${FASHIONREC_PARAMS:-/app/params.yaml}" \
  -s "serve.bundles=${FASHIONREC_BUNDLES:-/srv/bundles}" -s "serve.static_dir=/app/serving/static" \
  ${FASHIONREC_INVENTORY_ROOT:+-s "serve.inventory_root=$FASHIONREC_INVENTORY_ROOT"} \
  --host 0.0.0.0 --port "${PORT:-8000}"
