#!/bin/bash -e
# Runs on the build host with the image's root at ROOTFS_DIR (pi-gen runs
# 00-packages first, so polkitd and dbus are in place). The same install.sh
# as image/build: the first user runs lightningd.
"${CLN_REPLICA_SRC:?set CLN_REPLICA_SRC in pi-gen config}/image/install.sh" \
    --root "${ROOTFS_DIR}" --binary "${CLN_REPLICA_BINARY:?set CLN_REPLICA_BINARY in pi-gen config}" \
    --user "${FIRST_USER_NAME:-pi}" --lightning-dir /home/"${FIRST_USER_NAME:-pi}"/.lightning/bitcoin
