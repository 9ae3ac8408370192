#!/bin/sh
# Container start: serve the bundle in $FASHIONREC_BUNDLES/current; without one, pull the champion from
# MLflow and embed the catalog ($FASHIONREC_CATALOG, or index.catalog/manifest in params) first.
set -eu
BUNDLES="${FASHIONREC_BUNDLES:-/srv/bundles}"
PARAMS="${FASHIONREC_PARAMS:-params.yaml}"
if [ ! -e "$BUNDLES/current" ]; then
  echo "no bundle in $BUNDLES: building one from models:/fashionrec@champion" >&2
  if [ -n "${FASHIONREC_CATALOG:-}" ]; then
    fashionrec index -p "$PARAMS" -s "index.bundles=$BUNDLES" --catalog "$FASHIONREC_CATALOG"
  else
    fashionrec index -p "$PARAMS" -s "index.bundles=$BUNDLES"
  fi
fi
exec fashionrec serve -p "$PARAMS" -s "serve.bundles=$BUNDLES" -s "serve.static_dir=/app/serving/static" \
  ${FASHIONREC_INVENTORY_ROOT:+-s "serve.inventory_root=$FASHIONREC_INVENTORY_ROOT"} \
  --host 0.0.0.0 --port "${PORT:-8000}"
