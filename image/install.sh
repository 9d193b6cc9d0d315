#!/usr/bin/env bash
# Installs cln-replica on a Raspberry Pi OS system, or into a root filesystem
# being built (pi-gen: --root "$ROOTFS_DIR"): the binary, the systemd units,
# example configurations (never overwriting existing ones), the udev rule,
# and enables the backup mount and the panel. lightningd's own unit and
# config are the image's business: this adds the drop-in, and prints the
# line lightningd's config needs.
#   usage: install.sh --binary PATH [--root DIR] [--lightning-dir DIR]
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
repo=$(cd "$here/.." && pwd)
root=/
binary=
lightning_dir=/home/bitcoin/.lightning/bitcoin
while [ $# -gt 0 ]; do
    case $1 in
        --root) root=$2; shift 2 ;;
        --binary) binary=$2; shift 2 ;;
        --lightning-dir) lightning_dir=$2; shift 2 ;;
        *) echo "install.sh: unknown argument $1" >&2; exit 2 ;;
    esac
done
[ -n "$binary" ] && [ -x "$binary" ] || { echo "install.sh: --binary must name the cln-replica executable" >&2; exit 2; }

inst() { install -D -m "$1" "$2" "$root/$3"; echo "installed $3"; }
# Examples only where nothing is configured yet.
inst_config() {
    if [ -e "$root/$2" ]; then echo "kept existing $2"; else inst 0644 "$1" "$2"; fi
}

inst 0755 "$binary" usr/local/bin/cln-replica
inst 0644 "$repo/systemd/cln-replica-panel.service" etc/systemd/system/cln-replica-panel.service
inst 0644 "$repo/systemd/mnt-lnbackup.mount" etc/systemd/system/mnt-lnbackup.mount
inst 0644 "$repo/systemd/lightningd.service.d/cln-replica.conf" etc/systemd/system/lightningd.service.d/cln-replica.conf
inst 0644 "$here/99-cln-replica-gpio.rules" etc/udev/rules.d/99-cln-replica-gpio.rules
inst 0644 "$repo/docs/PANEL.md" usr/local/share/doc/cln-replica/PANEL.md
inst_config "$here/panel.toml" etc/cln-replica/panel.toml
inst_config "$here/cln-replica.toml" "${lightning_dir#/}/cln-replica.toml"
mkdir -p "$root/mnt/lnbackup"

systemctl --root="$root" enable mnt-lnbackup.mount cln-replica-panel.service
cat <<MSG
Done. Add to lightningd's config (${lightning_dir%/*}/config):
$(grep -v '^#' "$here/lightningd.conf.snippet")
and label the backup device's ext4 filesystem LNBACKUP (e2label /dev/sdX1 LNBACKUP).
MSG
