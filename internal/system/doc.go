// Package system holds banger's host plumbing that runs no programs: atomic file replacement
// (AtomicReplace) and sparse file cloning (CloneFile). The code that does run host tools is
// split by domain into its subpackages, the only places outside the VMM drivers and the
// CLI's ssh hand-off allowed to import os/exec (exec_policy_test.go):
//
//   - system/ext4: the ext4 toolkit (mkfs.ext4, debugfs, e2fsck), work seeds, work disks;
//   - system/hosttools: finding host tools and their versions, mmdebstrap, systemctl;
//   - system/proc: process helpers (running a binary, the daemon's detached start).
package system
