#!/bin/sh
# Seeds corpus/<target>/ with the captured Device OS datagrams.
set -eu
cd "$(dirname "$0")"
for t in dtls_record dtls_handshake dtls_endpoints; do
  mkdir -p "corpus/$t"
  python3 - "$t" <<'PY'
import json, sys
t = sys.argv[1]
for line in open("../tests/vectors/wire/datagrams.jsonl"):
    d = json.loads(line)
    raw = bytes.fromhex(d["hex"])
    if t == "dtls_handshake":
        raw = bytes([0]) + raw[13 + 12:]  # selector + a handshake body
    if t == "dtls_endpoints":
        raw = len(raw).to_bytes(2, "big") + raw
    open(f"corpus/{t}/dg{d['n']:02}", "wb").write(raw)
PY
done
