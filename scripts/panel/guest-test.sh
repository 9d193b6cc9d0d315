#!/bin/sh
# Runs inside the qemu guest (see scripts/test.d/50-panel): creates a
# gpio-sim chip, runs `cln-replica panel` on it against a status file this
# script writes, reads the LED lines and drives the button through gpio-sim's
# sysfs attributes, and prints PASS/FAIL lines for the host to check.
export PATH=/bin
mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev 2>/dev/null
mount -t configfs configfs /sys/kernel/config
mount -t tmpfs tmpfs /tmp
mkdir -p /run/cln-replica

fails=0
pass() { echo "PANEL PASS: $*"; }
fail() { echo "PANEL FAIL: $*"; fails=$((fails + 1)); }

# A chip with 4 lines: 0 status LED, 1 alert LED (wired active-low), 2 button
# (active-low with pull-up, as on a Pi with the button to ground).
cfg=/sys/kernel/config/gpio-sim/panel
mkdir $cfg $cfg/bank0
echo 4 > $cfg/bank0/num_lines
echo 1 > $cfg/live
chip=$(cat $cfg/bank0/chip_name)
dev=$(cat $cfg/dev_name)
sim=/sys/devices/platform/$dev/$chip
[ -c /dev/$chip ] && pass "gpio-sim chip /dev/$chip" || fail "no /dev/$chip"
echo pull-up > $sim/sim_gpio2/pull

cat > /tmp/panel.toml <<TOML
status_file = "/run/cln-replica/status.json"
lightning_rpc = "/run/lightning-rpc-absent"
status_stale_ms = 3000
long_press_ms = 1500
debounce_ms = 30
seal_timeout_ms = 2000
unmount_command = ["/bin/sh", "-c", "touch /tmp/unmounted"]
poweroff_command = ["/bin/sh", "-c", "touch /tmp/powered-off"]
[status_led]
chip = "$chip"
line = 0
[alert_led]
chip = "/dev/$chip"
line = 1
active_low = true
[button]
chip = "$chip"
line = 2
active_low = true
bias = "pull-up"
TOML

# The status writer: rewrites the file atomically every 300 ms from the
# wanted state in /tmp/want, as the plugin's publisher does; `frozen` stops
# it (a plugin that stopped refreshing).
want() { printf "STATE='%s'\nSEALED='%s'\nEXTRA='%s'\nFROZEN='%s'\n" "$1" "$2" "$3" "${4:-0}" > /tmp/want; }
writer() {
    while :; do
        . /tmp/want
        if [ "$FROZEN" = 0 ]; then
            now=$(($(date +%s) * 1000))
            printf '{"state":"%s","reason":null,"pid":1,"journal":null,"generation":1,"data_version":5,"pending":false,"journal_bytes":0,"last_write_unix_ms":0,"sealed":%s,"hooks":0,"hook_latency_us_p50":null,"hook_latency_us_p99":null,"updated_unix_ms":%s%s}\n' \
                "$STATE" "$SEALED" "$now" "$EXTRA" > /run/cln-replica/status.json.tmp
            mv /run/cln-replica/status.json.tmp /run/cln-replica/status.json
        fi
        usleep 300000
    done
}
want in_sync false ""
writer &
writer_pid=$!

start_panel() {
    cln-replica panel --config /tmp/panel.toml 2>>/tmp/panel.log &
    panel_pid=$!
    sleep 2
}

# Samples both LED lines every 50 ms for $1 samples; sets S and A to the
# percentage of samples each LED was lit (alert is active-low).
sample() {
    n=0; s=0; a=0
    while [ $n -lt "$1" ]; do
        read v0 < $sim/sim_gpio0/value
        read v1 < $sim/sim_gpio1/value
        [ "$v0" = 1 ] && s=$((s + 1))
        [ "$v1" = 0 ] && a=$((a + 1))
        n=$((n + 1))
        usleep 50000
    done
    S=$((s * 100 / n)); A=$((a * 100 / n))
}

# shown TEXT: the panel's last logged condition contains TEXT (duty cycles
# alone cannot tell every pattern apart at this sampling rate).
shown() {
    last=$(grep -v -e 'button' -e 'safe shutdown' -e 'watching' /tmp/panel.log | tail -1)
    case "$last" in
        *"$1"*) pass "logged: $last" ;;
        *) fail "last logged condition is '$last', want '$1'" ;;
    esac
}

# check NAME S_MIN S_MAX A_MIN A_MAX
check() {
    if [ $S -ge $2 ] && [ $S -le $3 ] && [ $A -ge $4 ] && [ $A -le $5 ]; then
        pass "$1: status LED lit $S%, alert LED lit $A%"
    else
        fail "$1: status LED lit $S% (want $2..$3), alert LED lit $A% (want $4..$5)"
    fi
}

start_panel
kill -0 $panel_pid 2>/dev/null && pass "panel running" || fail "panel exited: $(cat /tmp/panel.log)"

sample 40; check "in sync: status steady" 95 100 0 0
shown "in sync"
want in_sync false ',"remote_lagging":true'; sleep 1
sample 80; check "remote lagging: status slow blink" 25 75 0 0
shown "remote copy lagging"
want in_sync false ',"device_nearly_full":true'; sleep 1
sample 80; check "device nearly full: status steady, alert long blink" 95 100 55 95
shown "backup device nearly full"
want halted false ""; sleep 1
sample 60; check "halted: alert fast blink" 0 0 25 75
shown "ALERT: the plugin halted"
want in_sync false ',"degraded":"backup device lost"'; sleep 1
sample 40; check "degraded: alert fast blink" 0 0 25 75
shown "ALERT: running without backup: backup device lost"
want in_sync false ""; sleep 1
want in_sync false "" 1; sleep 4
sample 80; check "status not refreshed: unknown, never in sync" 0 0 10 45
shown "status unknown: not refreshed"
rm -f /run/cln-replica/status.json; sleep 1
sample 40; check "no status file: unknown" 0 0 10 45
shown "status unknown: cannot read"
want stopped true ""; sleep 1
sample 80; check "lightningd stopped: status blip" 1 25 0 0
shown "lightningd not running: stopped cleanly"

# A short press shows the code: one flash, then dark, while in sync.
want in_sync false ""; sleep 1
echo pull-down > $sim/sim_gpio2/pull; usleep 300000; echo pull-up > $sim/sim_gpio2/pull
sample 20; check "short press: code flash interrupts steady" 5 70 0 0
sleep 2
sample 20; check "after the code: steady again" 95 100 0 0
grep -q "button: in sync" /tmp/panel.log && pass "short press logged" || fail "short press not logged"

# A long press while the journal is sealed: the whole sequence runs.
want stopped true ""; sleep 1
echo pull-down > $sim/sim_gpio2/pull; sleep 2; echo pull-up > $sim/sim_gpio2/pull
i=0; while [ ! -f /tmp/powered-off ] && [ $i -lt 100 ]; do usleep 100000; i=$((i + 1)); done
if [ -f /tmp/powered-off ] && [ -f /tmp/unmounted ]; then
    pass "long press: unmounted and powered off"
else
    fail "long press: no power-off ($(cat /tmp/panel.log))"
fi
grep -q "lightningd is not running" /tmp/panel.log && pass "stop step logged" || fail "stop step not logged"
grep -q "power off: ok" /tmp/panel.log && pass "power-off step logged" || fail "power-off step not logged"
sample 20; check "powering off: dark" 0 0 0 0

# Again with a journal that never gets sealed: the wait fails, no unmount,
# no power-off, alert steady.
kill $panel_pid; wait $panel_pid 2>/dev/null
rm -f /tmp/powered-off /tmp/unmounted
want in_sync false ""
start_panel
echo pull-down > $sim/sim_gpio2/pull; sleep 2; echo pull-up > $sim/sim_gpio2/pull
sleep 3
sample 20; check "failed shutdown: alert steady" 0 0 100 100
if [ ! -f /tmp/powered-off ] && [ ! -f /tmp/unmounted ]; then
    pass "failed shutdown: nothing unmounted or powered off"
else
    fail "failed shutdown went on"
fi
grep -q "wait for the sealed journal: FAILED" /tmp/panel.log && pass "failure logged" || fail "failure not logged"
# A short press acknowledges it.
echo pull-down > $sim/sim_gpio2/pull; usleep 300000; echo pull-up > $sim/sim_gpio2/pull
sleep 2
sample 20; check "acknowledged: in sync again" 95 100 0 0

kill $panel_pid $writer_pid
echo "---- panel log ----"; cat /tmp/panel.log; echo "----"
echo "PANEL RESULT: $fails failure(s)"
