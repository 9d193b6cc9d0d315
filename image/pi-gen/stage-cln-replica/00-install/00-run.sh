#!/bin/bash -e
# Runs on the build host with the image's root at ROOTFS_DIR.
"${CLN_REPLICA_SRC:?set CLN_REPLICA_SRC in pi-gen config}/image/install.sh" \
    --root "${ROOTFS_DIR}" --binary "${CLN_REPLICA_BINARY:?set CLN_REPLICA_BINARY in pi-gen config}" \
    --lightning-dir /home/"${FIRST_USER_NAME:-pi}"/.lightning/bitcoin
