#!/usr/bin/env bash
# Enforces the include rules of DESIGN.md that linking alone cannot: libcurl, OpenSSL and
# pugixml only in s3/*.cc; cpp-httplib only in common/metrics_endpoint.cc; <fuse_lowlevel.h>/<fuse.h> only in fuse/ adapter and session
# files; no layer includes a layer above it.
set -euo pipefail
root=${1:-$(cd "$(dirname "$0")/.." && pwd)}
cd "$root"
fail=0
violation() { echo "layering violation: $*"; fail=1; }

while IFS= read -r f; do
  case "$f" in s3/*.cc) ;; *) violation "$f includes libcurl/OpenSSL/pugixml (only s3/*.cc may)";; esac
done < <(grep -lE '#include[[:space:]]*[<"](curl/|openssl/|pugixml)' \
           $(git ls-files --cached --others --exclude-standard '*.h' '*.cc' 2>/dev/null || find . -name '*.h' -o -name '*.cc') \
           | grep -vE '^(tests|bench)/' || true)

while IFS= read -r f; do
  case "$f" in fuse/adapter*|fuse/session*) ;; *) violation "$f includes libfuse (only fuse/adapter* and fuse/session* may)";; esac
done < <(grep -lE '#include[[:space:]]*[<"]fuse(_lowlevel)?\.h' \
           $(git ls-files --cached --others --exclude-standard '*.h' '*.cc' 2>/dev/null || find . -name '*.h' -o -name '*.cc') || true)

while IFS= read -r f; do
  case "$f" in common/metrics_endpoint.cc) ;; *) violation "$f includes cpp-httplib (only common/metrics_endpoint.cc may)";; esac
done < <(grep -lE '#include[[:space:]]*[<"]httplib\.h' \
           $(git ls-files --cached --others --exclude-standard '*.h' '*.cc' 2>/dev/null || find . -name '*.h' -o -name '*.cc') \
           | grep -vE '^(tests|bench)/' || true)

# Upward includes: common must not include s3/cache/fuse/mountd, s3 not cache/fuse/mountd, ...
check_up() {
  local dir=$1 pattern=$2
  local hits
  hits=$(grep -lE "#include[[:space:]]*\"($pattern)/" $(git ls-files --cached --others --exclude-standard "$dir/*.h" "$dir/*.cc" 2>/dev/null) 2>/dev/null || true)
  for h in $hits; do violation "$h includes a higher layer ($pattern)"; done
}
check_up common 's3|cache|fuse|mountd'
check_up s3 'cache|fuse|mountd'
check_up cache 'fuse|mountd'
check_up fuse 'mountd|cli'
check_up mountd 'cache|fuse|cli'

# mountd sees s3/ only through its interfaces (the client and the credentials), never the
# libcurl client: the CLI builds that and hands it over.
while IFS= read -r hit; do
  violation "${hit%%:*} includes an s3/ implementation header (mountd may include only s3/object_client.h and s3/credentials.h)"
done < <(grep -HE '#include[[:space:]]*"s3/' $(git ls-files --cached --others --exclude-standard 'mountd/*.h' 'mountd/*.cc' 2>/dev/null) /dev/null 2>/dev/null |
         grep -vE '"s3/(object_client|credentials)\.h"' || true)

if [ $fail -ne 0 ]; then exit 1; fi
echo "layering ok"
