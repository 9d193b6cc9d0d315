#!/usr/bin/env bash
# Installs cln-replica on a Debian or Raspberry Pi OS system, or into a root
# filesystem being built (--root DIR: image/build, or pi-gen with
# "$ROOTFS_DIR"): the binary, the systemd units and drop-ins, the panel's user
# and its polkit rule, example configurations (never overwriting existing
# ones), the udev rule, and enables the backup mount, the panel and the
# daily restore drill's timer.
# lightningd's own unit and config are the system's business: this adds the
# drop-ins, and prints the lines lightningd's config needs.
#   usage: install.sh --binary PATH [--root DIR] [--user NAME]
#                     [--lightning-dir DIR] [--rpc-file PATH]
#   --user           lightningd's user (default bitcoin); it must exist
#   --lightning-dir  lightningd's network directory (default
#                    /home/USER/.lightning/bitcoin); made, owned by USER
#   --rpc-file       lightningd's JSON-RPC socket (default
#                    /run/lightningd/lightning-rpc, outside the 0700 network
#                    directory so that the panel's group can reach it)
# Needs systemd-sysusers and systemctl on the machine that runs it.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
repo=$(cd "$here/.." && pwd)
root=/
binary=
user=bitcoin
lightning_dir=
rpc_file=/run/lightningd/lightning-rpc
while [ $# -gt 0 ]; do
    case $1 in
        --root) root=$2; shift 2 ;;
        --binary) binary=$2; shift 2 ;;
        --user) user=$2; shift 2 ;;
        --lightning-dir) lightning_dir=$2; shift 2 ;;
        --rpc-file) rpc_file=$2; shift 2 ;;
        *) echo "install.sh: unknown argument $1" >&2; exit 2 ;;
    esac
done
[ -n "$binary" ] && [ -x "$binary" ] || { echo "install.sh: --binary must name the cln-replica executable" >&2; exit 2; }
lightning_dir=${lightning_dir:-/home/$user/.lightning/bitcoin}
case $lightning_dir in /*) ;; *) echo "install.sh: --lightning-dir must be absolute" >&2; exit 2 ;; esac
case $rpc_file in /*) ;; *) echo "install.sh: --rpc-file must be absolute" >&2; exit 2 ;; esac

# lightningd's user and group, from the target's own files (in a root
# filesystem being built, the host's users are not the image's).
passwd_line=$(awk -F: -v u="$user" '$1 == u' "$root/etc/passwd")
[ -n "$passwd_line" ] || { echo "install.sh: no user $user in $root/etc/passwd: create lightningd's user first (or pass --user)" >&2; exit 1; }
uid=$(cut -d: -f3 <<<"$passwd_line")
gid=$(cut -d: -f4 <<<"$passwd_line")
group=$(awk -F: -v g="$gid" '$3 == g { print $1 }' "$root/etc/group")
[ -n "$group" ] || { echo "install.sh: no group with gid $gid in $root/etc/group" >&2; exit 1; }

inst() { install -D -m "$1" "$2" "$root/$3"; echo "installed $3"; }
# Examples only where nothing is configured yet.
inst_config() {
    if [ -e "$root/$2" ]; then echo "kept existing $2"; else inst 0644 "$1" "$2"; fi
}
unit_dir=etc/systemd/system

inst 0755 "$binary" usr/local/bin/cln-replica
inst 0644 "$repo/systemd/cln-replica-panel.service" $unit_dir/cln-replica-panel.service
inst 0644 "$repo/systemd/mnt-lnbackup.mount" $unit_dir/mnt-lnbackup.mount
# The device unit the mount waits for: a missing backup device fails the
# mount after 30 s instead of systemd's default 90 s.
inst 0644 "$repo/systemd/lnbackup-device-timeout.conf" "$unit_dir/dev-disk-by\\x2dlabel-LNBACKUP.device.d/cln-replica.conf"
inst 0644 "$repo/systemd/lightningd.service.d/cln-replica.conf" $unit_dir/lightningd.service.d/cln-replica.conf
inst 0644 "$here/99-cln-replica-gpio.rules" etc/udev/rules.d/99-cln-replica-gpio.rules
inst 0644 "$here/polkit/60-cln-replica-panel.rules" etc/polkit-1/rules.d/60-cln-replica-panel.rules
inst 0644 "$repo/docs/PANEL.md" usr/local/share/doc/cln-replica/PANEL.md
inst 0644 "$repo/docs/DRILL.md" usr/local/share/doc/cln-replica/DRILL.md
inst 0644 "$repo/systemd/cln-replica-drill.timer" $unit_dir/cln-replica-drill.timer

# The panel's own user: in the gpio group (the udev rule gives it the chips)
# and in lightningd's group (the RPC socket and the status file's directory
# are group-readable, nothing else of lightningd's is).
mkdir -p "$root/etc/sysusers.d"
cat >"$root/etc/sysusers.d/cln-replica.conf" <<SYSUSERS
# cln-replica's front panel (cln-replica-panel.service), made by image/install.sh.
g gpio -
u cln-panel - "cln-replica front panel" -
m cln-panel gpio
m cln-panel $group
SYSUSERS
echo "installed etc/sysusers.d/cln-replica.conf"
if [ "$root" = / ]; then
    systemd-sysusers /etc/sysusers.d/cln-replica.conf
else
    systemd-sysusers --root="$root" "$root/etc/sysusers.d/cln-replica.conf"
fi

# lightningd's network directory, owned by its user (lightningd makes its
# own directories 0700; the database and hsm_secret go there).
parent=${lightning_dir%/*}
for d in "$parent" "$lightning_dir"; do
    if [ ! -d "$root/$d" ]; then
        install -d -m 0700 -o "$uid" -g "$gid" "$root/$d"
        echo "made $d (owner $user)"
    fi
done
inst_config "$here/cln-replica.toml" "${lightning_dir#/}/cln-replica.toml"
if [ -e "$root/etc/cln-replica/panel.toml" ]; then
    echo "kept existing etc/cln-replica/panel.toml"
else
    install -d -m 0755 "$root/etc/cln-replica"
    sed "s#^lightning_rpc = .*#lightning_rpc = \"$rpc_file\"#" "$here/panel.toml" >"$root/etc/cln-replica/panel.toml"
    chmod 0644 "$root/etc/cln-replica/panel.toml"
    echo "installed etc/cln-replica/panel.toml (lightning_rpc = $rpc_file)"
fi

# The journal's directory on the backup device, made at each start of
# lightningd by systemd (as root) and owned by lightningd's user: a freshly
# formatted device has only root's lost+found.
journal=$(sed -n 's/^journal *= *"\(.*\)"/\1/p' "$root/${lightning_dir#/}/cln-replica.toml")
[ -n "$journal" ] || { echo "install.sh: no journal = \"...\" in ${lightning_dir}/cln-replica.toml" >&2; exit 1; }
cat >"$root/$unit_dir/lightningd.service.d/cln-replica-journal.conf" <<DROPIN
# Made by image/install.sh for lightningd's user $user. The '+' runs this one
# command as root, before lightningd starts as $user.
[Service]
ExecStartPre=+/usr/bin/install -d -m 0700 -o $user -g $group $journal
DROPIN
echo "installed $unit_dir/lightningd.service.d/cln-replica-journal.conf"
mkdir -p "$root/mnt/lnbackup"

# The daily restore drill runs as lightningd's user, on its network directory.
sed -e "s#^User=.*#User=$user#" -e "s#^Group=.*#Group=$group#" \
    -e "s#--lightning-dir [^ ]*#--lightning-dir $lightning_dir#" \
    "$repo/systemd/cln-replica-drill.service" >"$root/$unit_dir/cln-replica-drill.service"
chmod 0644 "$root/$unit_dir/cln-replica-drill.service"
echo "installed $unit_dir/cln-replica-drill.service (User=$user, --lightning-dir $lightning_dir)"

systemctl --root="$root" enable mnt-lnbackup.mount cln-replica-panel.service cln-replica-drill.timer
cat <<MSG
Done. Add to lightningd's config (${lightning_dir%/*}/config):
$(grep -v '^#' "$here/lightningd.conf.snippet" | sed "s#^rpc-file=.*#rpc-file=$rpc_file#")
and label the backup device's ext4 filesystem LNBACKUP (e2label /dev/sdX1 LNBACKUP).
MSG
