#!/usr/bin/env bash
# Evaluate anywhere, with nothing but grpcurl and jq: an external study on the Branin function.
#
#   examples/external/grpcurl.sh 127.0.0.1:50051      # or TUNEYARD_ADDRESS=HOST:PORT
#
# It creates the study of branin.json (beside this file), then loops: SuggestTrials (up to two
# trials, leased to this client) -> Branin computed with jq's math -> ReportTrial (step 1) ->
# CompleteTrial, until the server answers study_done; then it prints the best trial. grpcurl
# needs no proto files: the server answers reflection. Plaintext is for a loopback server; add
# -cacert / -H 'authorization: Bearer ...' for one behind TLS and a token (see the README).
set -euo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
address=${1:-${TUNEYARD_ADDRESS:-127.0.0.1:50051}}
service=tuneyard.v1.TrainingService
client_id="grpcurl-$(hostname)-$$"

# call METHOD JSON: one unary call; grpcurl prints the reply as proto3 JSON with the proto's field
# names (study_id), enums by name (TRIAL_COMPLETED) and default values (false, 0, "") left out.
call() {
  grpcurl -plaintext -d @ "$address" "$service/$1" <<<"$2"
}

# Branin-Hoo on x in [-5, 10], y in [0, 15] (minimum 0.397887), of a trial's config {x, y}.
branin='(1 | atan * 4) as $pi
  | (5.1 / (4 * $pi * $pi)) as $b | (5 / $pi) as $c | (1 / (8 * $pi)) as $t
  | pow(.y - $b * .x * .x + $c * .x - 6; 2) + 10 * (1 - $t) * (.x | cos) + 10'

request=$(jq -c --arg rid "branin-$(date +%s)-$$" '{spec: ., request_id: $rid}' "$here/branin.json")
study_id=$(call CreateStudy "$request" | jq -r .study_id)
echo "study $study_id on $address"

while true; do
  response=$(call SuggestTrials "$(jq -nc --arg s "$study_id" --arg c "$client_id" \
    '{study_id: $s, count: 2, client_id: $c}')")
  if [[ $(jq '.trials // [] | length' <<<"$response") == 0 ]]; then
    [[ $(jq '.study_done // false' <<<"$response") == true ]] && break
    sleep 0.2 # other clients hold the concurrency slots: ask again soon
    continue
  fi
  while read -r trial; do
    trial_id=$(jq .trial_id <<<"$trial")
    value=$(jq ".config | $branin" <<<"$trial")
    decision=$(call ReportTrial "$(jq -nc --arg s "$study_id" --argjson t "$trial_id" --argjson v "$value" \
      '{study_id: $s, trial_id: $t, step: 1, metrics: {value: $v}}')" | jq -r .decision)
    # STOP (pruned, cancelled, past the deadline): complete with no metrics, the reported step stands.
    metrics=$([[ $decision == STOP ]] && echo '{}' || jq -nc --argjson v "$value" '{value: $v}')
    ended=$(call CompleteTrial "$(jq -nc --arg s "$study_id" --argjson t "$trial_id" --argjson m "$metrics" \
      '{study_id: $s, trial_id: $t, state: "TRIAL_COMPLETED", metrics: $m}')")
    echo "trial $trial_id $(jq -r .state <<<"$ended") value=$value config=$(jq -c .config <<<"$trial")"
  done < <(jq -c '.trials[]' <<<"$response")
done

study=$(call GetStudy "$(jq -nc --arg s "$study_id" '{study_id: $s}')")
jq -r '"study \(.study_id) \(.state): \(.trial_counts.completed // 0) trials completed",
  "best trial \(.best_trial.trial_id): value \(.best_trial.objective_value) at \(.best_trial.config | tojson)"' \
  <<<"$study"
