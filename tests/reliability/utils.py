"""What the reliability tests hold every server to, in one place."""

from __future__ import annotations

import re

ADDRESS_SPACE_MIB = 3072             # RLIMIT_AS of a test server: a toy server maps ~2.0 GiB (VmSize) at rest
BUDGET_MIB = 400 * 10**6 // 2**20    # docs/BENCHMARKS.md: the server's RSS budget, 400 MB
# what an answer must never show: a traceback, an exception's name, a server path
LEAK = re.compile(r"Traceback|[A-Z][a-zA-Z]+(Error|Exception)\b|(?<![\w.:/])/(tmp|work|home|usr|srv)/")
