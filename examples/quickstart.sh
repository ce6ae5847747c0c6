#!/usr/bin/env bash
# deputy in a minute: run against a server started with README's first command and an admin
# credential, e.g.
#
#   export DEPUTY_ADMIN_TOKEN=$(head -c 24 /dev/urandom | base64)
#   cargo run --release -- serve &          # the example bundle, on 127.0.0.1:8180
#   examples/quickstart.sh                  # DEPUTY_URL=http://HOST:PORT for another address
#
# It tells the story step by step: a decision for an agent the bundle declares, a root agent
# created by the admin, a child with a narrower grant proven within its parent's, a child's
# grant that exceeds its parent's refused, a denial that says what is needed, a permission
# request approved by the parent, and a revocation that takes parent and child down. Each step
# checks deputy's answer and the script exits non-zero at the first one that is not what it
# expects. Needs bash, curl and python3 (for reading JSON). tests/it/quickstart.rs runs it.
set -euo pipefail

url=${DEPUTY_URL:-http://127.0.0.1:8180}
url=${url%/}
admin=${DEPUTY_ADMIN_TOKEN:-}
[ ${#admin} -ge 16 ] || {
  echo "quickstart: set DEPUTY_ADMIN_TOKEN to the admin credential the server was started with (at least 16 characters)" >&2
  exit 2
}
for tool in curl python3; do
  command -v "$tool" >/dev/null || { echo "quickstart: $tool is required (apt-get install $tool)" >&2; exit 2; }
done

work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
step=0

# call METHOD PATH TOKEN [JSON]: sets $status and $body (deputy's answer).
call() {
  local args=(-sS -o "$work/body" -w '%{http_code}' -X "$1" "$url$2" -H 'Content-Type: application/json')
  [ -z "$3" ] || args+=(-H "Authorization: Bearer $3")
  [ $# -lt 4 ] || args+=(--data-binary "$4")
  status=$(curl "${args[@]}") || { echo "quickstart: no answer from $url$2 (is deputy serving there?)" >&2; exit 1; }
  body=$(cat "$work/body")
}

# get PATH: a field of $body, e.g. `get denied_by.bound` or `get revoked.0`; JSON for non-strings.
get() {
  python3 -c '
import json, sys
v = json.loads(sys.argv[1])
for k in sys.argv[2].split("."):
    v = v[int(k)] if isinstance(v, list) and k.isdigit() and int(k) < len(v) else v.get(k) if isinstance(v, dict) else None
print(v if isinstance(v, str) else json.dumps(v))' "$body" "$1"
}

# A JSON string literal.
quote() { python3 -c 'import json, sys; print(json.dumps(sys.argv[1]))' "$1"; }

# expect WHAT ACTUAL WANTED: stop with deputy's answer when they differ.
expect() {
  if [ "$2" != "$3" ]; then
    echo "FAILED: $1: expected $3, got $2" >&2
    echo "deputy answered ($status): $body" >&2
    exit 1
  fi
}

say() { step=$((step + 1)); printf '\n%d. %s\n' "$step" "$*"; }
show() { printf '   %s\n' "$@"; }

authorize() { # AGENT ACTION TYPE ID
  call POST /v1/authorize "" "{\"principal\": {\"type\": \"Agent\", \"id\": \"$1\"},
    \"action\": {\"type\": \"Action\", \"id\": \"$2\"}, \"resource\": {\"type\": \"$3\", \"id\": \"$4\"}}"
  expect "POST /v1/authorize" "$status" 200
}

call GET /readyz ""
expect "GET /readyz ($url)" "$status" 200
call GET /v1/status ""
echo "deputy at $url, policy version $(get bundle.policy_version)"

say "An agent the bundle declares asks to read a file: the admin policies allow it."
authorize coder-1 read File repo/src/main.rs
expect "coder-1 read repo/src/main.rs" "$(get decision)" Allow
show "coder-1 read File::\"repo/src/main.rs\" -> Allow (policies $(get reasons))"
authorize coder-1 read File repo/src/payroll.rs
expect "coder-1 read repo/src/payroll.rs" "$(get decision)" Deny
show "coder-1 read File::\"repo/src/payroll.rs\" -> Deny (CONFIDENTIAL is above coder-1's ceiling)"

say "The admin creates a root agent that may read the repository and write its sources."
call POST /v1/delegations "$admin" '{
  "grant": "permit(principal == ?principal, action == Action::\"read\", resource in Folder::\"repo\");\npermit(principal == ?principal, action == Action::\"write\", resource in Folder::\"repo/src\");",
  "ttl_seconds": 3600, "ceiling": 2, "can_delegate": true, "task": "quickstart: orchestrate"}'
expect "POST /v1/delegations (admin)" "$status" 201
expect "root agent outcome" "$(get outcome)" applied
root=$(get delegation_id)
root_token=$(get credential)
show "201 applied: $root, depth $(get depth), credential returned once (deputy keeps its hash)"

say "The root agent spawns a child that may only read repo/src: deputy proves it within the parent's grant."
call POST /v1/delegations "$root_token" '{
  "grant": "permit(principal == ?principal, action == Action::\"read\", resource in Folder::\"repo/src\");",
  "ttl_seconds": 600, "ceiling": 1, "can_delegate": false, "task": "quickstart: read the sources"}'
expect "POST /v1/delegations (child)" "$status" 201
expect "child proof verdict" "$(get proof.verdict)" within
child=$(get delegation_id)
child_token=$(get credential)
show "201 applied: $child, depth $(get depth), proof: $(get proof.verdict)"

say "A child whose grant exceeds its parent's is refused, with a counterexample."
call POST /v1/delegations "$root_token" '{
  "grant": "permit(principal == ?principal, action == Action::\"write\", resource in Folder::\"repo\");",
  "ttl_seconds": 600, "ceiling": 1, "can_delegate": false, "task": "quickstart: write anywhere"}'
expect "POST /v1/delegations (exceeding child)" "$status" 403
expect "exceeding child error" "$(get code)" grant_exceeds_parent
show "403 grant_exceeds_parent; counterexample, allowed to the child but not to the parent:" \
  "$(get proof.counterexample.principal) $(get proof.counterexample.action) $(get proof.counterexample.resource)"

say "The child reads its sources, and is denied the README: the answer says what would be needed."
authorize "$child" read File repo/src/main.rs
expect "child read repo/src/main.rs" "$(get decision)" Allow
show "$child read File::\"repo/src/main.rs\" -> Allow"
authorize "$child" read File repo/README.md
expect "child read repo/README.md" "$(get decision)" Deny
expect "child read repo/README.md: denied_by.bound" "$(get denied_by.bound)" grant
expect "child read repo/README.md: needed.approver" "$(get needed.approver)" "$root"
template=$(get needed.template)
[ -n "$template" ] && [ "$template" != null ] || expect "needed.template" "$template" "a Cedar template"
show "$child read File::\"repo/README.md\" -> Deny, denied_by: $(get denied_by)" \
  "needed: $template (approver $root)"

say "The child asks for exactly that; its parent approves."
call POST /v1/permission-requests "$child_token" \
  "{\"grant\": $(quote "$template"), \"reason\": \"quickstart: the README explains the build\"}"
expect "POST /v1/permission-requests" "$status" 202
expect "permission request status" "$(get status)" pending
expect "permission request approver" "$(get approver)" "$root"
request=$(get request_id)
show "202 pending: $request, approver $root, can approve alone: $(get can_approve_alone)"
call POST "/v1/permission-requests/$request" "$root_token" '{"decision": "approve", "reason": "quickstart: fine"}'
expect "POST /v1/permission-requests/$request (approve)" "$status" 200
expect "permission request after approval" "$(get status)" approved
show "200 approved by $root: the child's grant is extended, proven within the parent's"
authorize "$child" read File repo/README.md
expect "child read repo/README.md after approval" "$(get decision)" Allow
show "$child read File::\"repo/README.md\" -> Allow (policies $(get reasons))"

say "The admin revokes the root agent: its child goes with it."
call DELETE "/v1/delegations/$root" "$admin"
expect "DELETE /v1/delegations/$root" "$status" 200
expect "revocation outcome" "$(get outcome)" revoked
case "$(get revoked)" in
  *"\"$child\""*) ;;
  *) expect "agents revoked with $root" "$(get revoked)" "a list holding $child" ;;
esac
show "200 revoked: $(get revoked)"
authorize "$child" read File repo/src/main.rs
expect "child read repo/src/main.rs after revocation" "$(get decision)" Deny
expect "child read after revocation: denied_by.bound" "$(get denied_by.bound)" revoked
show "$child read File::\"repo/src/main.rs\" -> Deny, denied_by: $(get denied_by)"

printf '\nquickstart: all %d steps answered as expected.\n' "$step"
