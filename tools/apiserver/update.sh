#!/usr/bin/env bash
# Usage: tools/apiserver/update.sh v1.37.2
# Points this module at k8s.io/kubernetes VERSION. Its go.mod replaces each
# k8s.io/* staging module with ./staging/..., which a module download does
# not contain; here each is replaced with its published v0.MINOR.PATCH.
set -euo pipefail
cd "$(dirname "$0")"
version=${1:?usage: $0 v1.MINOR.PATCH}
staging=v0.${version#v1.}
mod=$(go mod download -json "k8s.io/kubernetes@$version" | sed -n 's/^\t"GoMod": "\(.*\)",$/\1/p')
replaces=$(awk '$2 == "=>" && $3 ~ /^\.\/staging\// {print "\t" $1 " => " $1 " " v}' v="$staging" "$mod" | sort -u)
[ -n "$replaces" ] || { echo "no staging replaces in $mod" >&2; exit 1; }
cat > go.mod <<MOD
module github.com/agentfence/agentfence/tools/apiserver

go $(awk '$1 == "go" {print $2; exit}' "$mod")

require k8s.io/kubernetes $version

replace (
$replaces
)

tool k8s.io/kubernetes/cmd/kube-apiserver
MOD
rm -f go.sum
go mod tidy
