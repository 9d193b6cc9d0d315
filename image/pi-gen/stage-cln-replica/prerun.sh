#!/bin/bash -e
# pi-gen stage: put this directory after stage2 in pi-gen's STAGE_LIST, and
# set CLN_REPLICA_SRC (this repository) and CLN_REPLICA_BINARY (an aarch64
# or armhf build) in pi-gen's config.
if [ ! -d "${ROOTFS_DIR}" ]; then
    copy_previous
fi
