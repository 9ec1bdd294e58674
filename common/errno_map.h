// The one place where a Status becomes an errno.
//
// Contract: every errno that bucketfs returns to a program through FUSE comes from
// ToErrno(). Anything not listed maps to EIO. Choices follow mountpoint-s3 and leveldb:
// a precondition failure on an open handle means the object changed under it (ESTALE);
// missing objects are ENOENT; permission problems are EACCES; throttling and timeouts are
// transient (EAGAIN is not used because programs do not retry reads on it: EIO instead,
// after the client's own retries gave up).
#pragma once

#include "common/status.h"

namespace bucketfs {

// Returns a positive errno value for a non-OK status, 0 for OK.
int ToErrno(const Status& status);

}  // namespace bucketfs
