// The exit status of `bucketfs mount` and `bucketfs serve` when the mount fails: one
// number per kind of cause, so that a script or an init container can tell "fix the
// configuration" from "try again later" without parsing the message.
//
// Contract:
//  - ExitCodeFor() is the one place a failure's ErrorCode becomes an exit status; the
//    coordinator passes on the daemon's status when the daemon is what failed.
//  - 0 is success and 1 anything not listed. 128 + N is a mount ended by signal N while
//    it came up (Ctrl-C). CLI11's own parse errors (an unknown option) keep its codes,
//    which are 100 and above.
//  - The numbers are documented in README.md and docs/OPERATIONS.md; they never change
//    meaning once released.
#pragma once

#include "common/status.h"

namespace bucketfs {

enum ExitCode : int {
  kExitOk = 0,
  kExitFailure = 1,      // Anything below does not cover (a FUSE mount that failed, …).
  kExitUsage = 2,        // An option, path or mountpoint that cannot work: fix the command.
  kExitCredentials = 3,  // Keys missing, wrong or expired, or access denied (to the bucket,
                         // or to a local path such as the spool directory).
  kExitNoBucket = 4,     // The bucket does not exist at that endpoint and region.
  kExitBusy = 5,         // Another pod holds the bucket's lease, or the mountpoint or the
                         // spool is another mount's: wait for it, or unmount it there.
  kExitUnreachable = 6,  // The server did not answer in time, refused the connection,
                         // failed (5xx), throttled, or answered something unreadable.
  kExitNoSpace = 7,      // The spool or cache disk is full.
};

ExitCode ExitCodeFor(ErrorCode code);
inline ExitCode ExitCodeFor(const Status& status) { return ExitCodeFor(status.code()); }

}  // namespace bucketfs
