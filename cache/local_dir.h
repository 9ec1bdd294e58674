// Local directories that bucketfs owns (the spool, the disk cache): one place for their
// naming, locking and the Status of a failed system call on them.
#pragma once

#include <string>

#include "common/status.h"

namespace bucketfs::cache {

// A failed system call on a local file as a Status: a full disk (ENOSPC, EDQUOT) is
// kNoSpace, a permission problem kAccessDenied, anything else kInternal; the message is
// `what`: strerror.
Status LocalIoStatus(int err, const std::string& what);

// A bucket name as one safe directory name: bucket names are safe already, but an alias or
// an odd endpoint must never reach outside the root it is put under.
std::string SafeDirName(const std::string& bucket);

// Creates `dir` (and parents) and takes an exclusive flock() on `dir`/lock for as long as
// the returned descriptor stays open. kBusy (ending with `busy_advice`) when another process
// holds it; `purpose` names the directory in messages ("the spool", "the disk cache").
Result<int> LockDirectory(const std::string& dir, const std::string& purpose,
                          const std::string& busy_advice);

}  // namespace bucketfs::cache
