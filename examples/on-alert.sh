#!/bin/sh
# An on_alert command for cln-replica (docs/METRICS.md, "Alerts"):
#
#   on_alert = ["/usr/local/bin/cln-replica-alert", "https://ntfy.sh/my-node-topic"]
#
# cln-replica runs it without a shell, at most one at a time, and kills it
# after 10 s. It receives the condition in its environment and, after the
# configured arguments, as three more arguments:
#   CLN_REPLICA_ALERT             halted | degraded | remote-lagging | device-nearly-full
#   CLN_REPLICA_ALERT_STATE       raised | cleared
#   CLN_REPLICA_ALERT_DESCRIPTION one line of fixed words and numbers (no secrets)
# Its output is discarded; its exit status is logged.
set -eu
url=${1:?usage: on-alert.sh NTFY_URL}
logger -t cln-replica-alert "$CLN_REPLICA_ALERT $CLN_REPLICA_ALERT_STATE: $CLN_REPLICA_ALERT_DESCRIPTION" || true
case "$CLN_REPLICA_ALERT_STATE" in
    raised) priority=high ;;
    *) priority=default ;;
esac
# ntfy's push (any HTTP endpoint works the same way); --max-time stays under the 10 s limit.
curl -fsS --max-time 8 -H "Title: cln-replica: $CLN_REPLICA_ALERT $CLN_REPLICA_ALERT_STATE" \
    -H "Priority: $priority" -d "$CLN_REPLICA_ALERT_DESCRIPTION" "$url" >/dev/null
