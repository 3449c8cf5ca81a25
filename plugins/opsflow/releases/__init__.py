"""What was deployed when: the record rollbacks and image pruning rely on."""
