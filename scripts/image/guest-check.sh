#!/bin/sh
# Runs inside the appliance image booted by scripts/test.d/70-image, as
# image-check.service (both are put into the test's copy of root.img, never
# into the image itself). Checks what systemd did at boot, prints IMAGE
# PASS/FAIL lines on the serial console for the host to count, records
# `systemd-analyze security` for each unit, and ends the boot:
#   cln_image_check=full     the backup disk is there: mount, lightningd,
#                            journal, panel, then the panel's safe shutdown
#   cln_image_check=missing  no backup disk: the documented failure, then a
#                            plain power-off
# Every wait is bounded (seconds, below).
fails=0
pass() { echo "IMAGE PASS: $*"; }
fail() { echo "IMAGE FAIL: $*"; fails=$((fails + 1)); }
info() { echo "IMAGE INFO: $*"; }
mode=$(sed -n 's/.*cln_image_check=\([a-z]*\).*/\1/p' /proc/cmdline)
record=/var/log/cln-replica-image
mkdir -p $record

# wait_for SECONDS COMMAND...: true once COMMAND succeeds, polled each second.
wait_for() {
    limit=$1; shift
    i=0
    while [ $i -lt "$limit" ]; do
        "$@" >/dev/null 2>&1 && return 0
        sleep 1; i=$((i + 1))
    done
    return 1
}
# status_field NAME: a scalar from the plugin's status file.
status_field() {
    sed -n "s/^ *\"$1\": *\"\{0,1\}\([^\",]*\)\"\{0,1\},\{0,1\}$/\1/p" /run/cln-replica/status.json 2>/dev/null
}
journal_has() { journalctl -b --no-pager -o cat "$@" 2>/dev/null | grep -q -F -- "$JOURNAL_TEXT"; }

info "mode $mode, up $(cut -d' ' -f1 /proc/uptime) s"
state=$(timeout 300 systemctl is-system-running --wait 2>&1)
info "system state: $state, up $(cut -d' ' -f1 /proc/uptime) s"
systemd-analyze time --no-pager 2>&1 | sed 's/^/IMAGE INFO: /'
failed=$(systemctl --failed --plain --no-legend --no-pager | awk '{ print $1 }' | tr '\n' ' ')
info "failed units: ${failed:-none}"
panel_uid=$(id -u cln-panel)

# The panel, in both modes: its own user, its groups, never root, and a
# clear word about the GPIO chip (the stand-in has no Raspberry Pi header:
# qemu's virt board has an 8-line PL061, or no chip at all).
[ "$(systemctl show -p User --value cln-replica-panel.service)" = cln-panel ] &&
    pass "the panel's unit runs as User=cln-panel" || fail "the panel's unit is not User=cln-panel"
groups=$(id -Gn cln-panel)
case " $groups " in *" gpio "*) in_gpio=yes ;; *) in_gpio=no ;; esac
case " $groups " in *" bitcoin "*) in_bitcoin=yes ;; *) in_bitcoin=no ;; esac
[ $in_gpio$in_bitcoin = yesyes ] && pass "cln-panel is in gpio and bitcoin ($groups)" || fail "cln-panel's groups: $groups"
# The words the panel must find for what the board has: qemu's PL061 has
# lines 0..7 (the header's line 17 is not one), and with the PL061 left out
# (boot 2) there is no chip at all.
if [ -e /dev/gpiochip0 ]; then
    JOURNAL_TEXT="cannot request line 17 of /dev/gpiochip0: /dev/gpiochip0 (gpiochip0, \"9030000.pl061\") has lines 0..7, not line 17"
else
    JOURNAL_TEXT="cannot request line 17 of /dev/gpiochip0: no GPIO chip /dev/gpiochip0: this machine's chips: none"
fi
if wait_for 60 journal_has -u cln-replica-panel.service _UID="$panel_uid"; then
    pass "the panel (uid $panel_uid) says: $(journalctl -b --no-pager -o cat -u cln-replica-panel.service _UID="$panel_uid" | grep -m1 -F -- "$JOURNAL_TEXT")"
else
    fail "no GPIO report from the panel as cln-panel: $(journalctl -b --no-pager -o cat -u cln-replica-panel.service | tail -5)"
fi
as_root=$(journalctl -b --no-pager -o cat -u cln-replica-panel.service _UID=0 _COMM=cln-replica | wc -l)
[ "$as_root" = 0 ] && pass "no panel process ran as root" || fail "$as_root panel log lines came from uid 0"
if [ -e /dev/gpiochip0 ]; then
    info "GPIO chips: $(ls /dev/gpiochip*), /dev/gpiochip0 $(stat -c '%U:%G %a' /dev/gpiochip0)"
    [ "$(stat -c %G /dev/gpiochip0)" = gpio ] && pass "the udev rule gave /dev/gpiochip0 to group gpio" ||
        fail "/dev/gpiochip0 is group $(stat -c %G /dev/gpiochip0)"
fi

# systemd-analyze security for every unit the image adds.
units="lightningd.service cln-replica-panel.service cln-replica-drill.service"
systemd-analyze security --no-pager $units >$record/security-summary.txt 2>&1
for u in $units; do
    systemd-analyze security --no-pager "$u" >"$record/security-$u.txt" 2>&1
done
echo "IMAGE-SECURITY-BEGIN"
cat $record/security-summary.txt
for u in $units; do echo "---- $u"; cat "$record/security-$u.txt"; done
echo "IMAGE-SECURITY-END"
for u in $units; do
    score=$(sed -n "s/.*Overall exposure level for $u: \([0-9.]*\).*/\1/p" "$record/security-$u.txt")
    info "systemd-analyze security $u: ${score:-?}"
done
panel_score=$(sed -n 's/.*Overall exposure level for cln-replica-panel.service: \([0-9.]*\).*/\1/p' \
    "$record/security-cln-replica-panel.service.txt")
[ -n "$panel_score" ] && awk -v s="$panel_score" 'BEGIN { exit !(s < 1.7) }' &&
    pass "the panel's exposure score $panel_score is below 1.7" || fail "the panel's exposure score is ${panel_score:-unknown}"
verify=$(systemd-analyze verify /etc/systemd/system/cln-replica-panel.service /etc/systemd/system/lightningd.service \
    /etc/systemd/system/mnt-lnbackup.mount /etc/systemd/system/cln-replica-drill.service \
    /etc/systemd/system/cln-replica-drill.timer 2>&1)
[ -z "$verify" ] && pass "systemd-analyze verify: the installed units are clean" || fail "systemd-analyze verify: $verify"

if [ "$mode" = missing ]; then
    # Documented (image/README.md): without the device the mount fails after
    # the device timeout (30 s), lightningd is not started (a dependency
    # failed), the rest of the boot completes, and the panel has the alert.
    [ -n "$state" ] && [ "$state" != starting ] && pass "the boot completed without the backup disk (state $state)" ||
        fail "the boot did not complete: $state"
    JOURNAL_TEXT="Timed out waiting for device"
    journal_has -u 'dev-disk-by\x2dlabel-LNBACKUP.device' && pass "systemd: $JOURNAL_TEXT /dev/disk/by-label/LNBACKUP" ||
        fail "no device timeout in the journal"
    JOURNAL_TEXT="Dependency failed"
    for u in mnt-lnbackup.mount lightningd.service; do
        journal_has -u $u && pass "systemd: $(journalctl -b --no-pager -o cat -u $u | grep -m1 "$JOURNAL_TEXT")" ||
            fail "no '$JOURNAL_TEXT' for $u in the journal"
    done
    findmnt /mnt/lnbackup >/dev/null && fail "something is mounted at /mnt/lnbackup" || pass "nothing mounted at /mnt/lnbackup"
    [ "$(systemctl is-active lightningd.service)" != active ] && pass "lightningd is not running" ||
        fail "lightningd runs without its backup"
    [ "$(systemctl is-active multi-user.target)" = active ] && pass "multi-user.target reached" ||
        fail "multi-user.target is $(systemctl is-active multi-user.target)"
    echo "IMAGE RESULT: $fails failure(s)"
    systemctl poweroff
    exit 0
fi

# The backup disk, by label, at boot.
[ "$state" = running ] && pass "system running, no failed unit" || fail "system $state; failed: $failed"
[ "$(systemctl is-active mnt-lnbackup.mount)" = active ] && pass "mnt-lnbackup.mount is active" ||
    fail "mnt-lnbackup.mount is $(systemctl is-active mnt-lnbackup.mount)"
mounted=$(findmnt -n -r -o SOURCE,LABEL,FSTYPE,OPTIONS /mnt/lnbackup)
case "$mounted" in
    /dev/vd*" LNBACKUP ext4 rw,noatime"*) pass "mounted by label: $mounted" ;;
    *) fail "/mnt/lnbackup: '$mounted'" ;;
esac

# The simulated lightningd with the real plugin, writing to the journal.
[ "$(systemctl is-active lightningd.service)" = active ] && pass "lightningd.service is active" ||
    fail "lightningd.service is $(systemctl is-active lightningd.service): $(journalctl -b --no-pager -o cat -u lightningd.service | tail -20)"
JOURNAL_TEXT="a SIMULATED lightningd"
journal_has -u lightningd.service && pass "lightningd.service says it is the simulator" || fail "lightningd.service does not say what it is"
main=$(systemctl show -p MainPID --value lightningd.service)
plugin=$(cat /proc/"$main"/task/*/children 2>/dev/null | tr ' ' '\n' | while read -r p; do
    [ -n "$p" ] && [ "$(readlink /proc/"$p"/exe)" = /usr/local/bin/cln-replica ] && echo "$p"; done | head -1)
if [ -n "$plugin" ] && [ "$(stat -c %U /proc/"$plugin")" = bitcoin ]; then
    pass "the plugin (pid $plugin) runs under lightningd (pid $main) as bitcoin"
else
    fail "no plugin process under lightningd (pid $main)"
fi
[ "$(stat -c '%U %a' /home/bitcoin/.lightning/bitcoin)" = "bitcoin 700" ] &&
    pass "the network directory is bitcoin's, 0700" || fail "network directory: $(stat -c '%U %a' /home/bitcoin/.lightning/bitcoin)"
[ "$(stat -c '%U %a' /mnt/lnbackup/cln-replica)" = "bitcoin 700" ] &&
    pass "the journal directory on the backup disk is bitcoin's, 0700" ||
    fail "journal directory: $(stat -c '%U %a' /mnt/lnbackup/cln-replica 2>&1)"
in_sync() { [ "$(status_field state)" = in_sync ]; }
wait_for 60 in_sync && pass "the plugin reports in_sync" || fail "plugin state: $(status_field state)"
first=$(status_field data_version)
advanced() { v=$(status_field data_version); [ -n "$v" ] && [ "$v" -ge $((${first:-0} + 5)) ]; }
if wait_for 60 advanced; then
    pass "the journal follows the node: data_version $first, then $(status_field data_version)"
else
    fail "data_version stuck at $(status_field data_version) (was $first)"
fi
ls /mnt/lnbackup/cln-replica | grep -q . && pass "journal on the backup disk: $(ls /mnt/lnbackup/cln-replica | tr '\n' ' ')" ||
    fail "nothing in /mnt/lnbackup/cln-replica"

# The panel's safe shutdown, as the panel's user under the panel's own
# hardening: a transient unit with the [Service] settings of its unit file.
set --
while IFS= read -r line; do
    case "$line" in
        ExecStart=* | Type=* | Restart=* | RestartSec=* | '#'* | '' | '['*) ;;
        *=*) set -- "$@" -p "$line" ;;
    esac
done <<EOF
$(sed -n '/^\[Service\]/,/^\[/p' /etc/systemd/system/cln-replica-panel.service)
EOF
echo "IMAGE RESULT: $fails failure(s) before the safe shutdown"
info "data_version before the safe shutdown: $(status_field data_version)"
journalctl -f -n 0 --no-pager -o cat -u lightningd.service -u mnt-lnbackup.mount >/dev/console 2>&1 &
info "safe shutdown: cln-replica panel --shutdown-now as cln-panel"
systemd-run --unit=panel-shutdown-now -p StandardOutput=journal+console -p StandardError=journal+console "$@" \
    /usr/local/bin/cln-replica panel --shutdown-now --config /etc/cln-replica/panel.toml
# The power-off ends this script; if it has not come in time, say so.
sleep 240
echo "IMAGE FAIL: still running 240 s after the safe shutdown started"
systemctl status --no-pager panel-shutdown-now.service lightningd.service mnt-lnbackup.mount 2>&1 | tail -30
systemctl poweroff
