// Spool: the local directory where the dirty data of files waits for its upload, with a
// journal that lets the next daemon finish what a killed one left.
//
// Layout under `<spool-dir>/<bucket>/`:
//   lock          flock()ed while a daemon uses the spool: two daemons never share it.
//   files/ID.data the file's bytes at their offsets (sparse: holes read as zeros).
//   files/ID.json its journal record (SpoolRecord), rewritten so that a killed daemon leaves
//                 either the old record or the new one, never a mix (see WriteRecord).
//   lost+found/   records the daemon would not upload (a writer never closed the file, or
//                 the record is unreadable), kept for a person to look at, never deleted.
//   uploads/HASH.json  a multipart upload the daemon started and has not yet completed or
//                 aborted (StartedUpload): the next daemon aborts the ones a killed daemon
//                 left, since an upload keeps its parts (and their storage cost) on the
//                 server until someone aborts it.
//
// Contract:
//  - Thread-safe: every method touches only its own files; ids are unique per spool.
//  - A record marked `closed` describes data a program wrote and closed: the next mount
//    uploads it before serving (Writeback::Recover). A daemon killed by SIGKILL loses
//    nothing written to the spool file: the bytes are in the kernel's page cache (or on
//    disk, for O_DIRECT writes) and reach the file regardless; the Writeback writes every
//    byte of a file there before journaling it closed. A node crash (power loss) before
//    the upload can lose them;
//    the spool is not fsync()ed on every close, as that would cost a disk flush per file.
//  - Errors are Status; a full disk is kNoSpace, never a silent loss.
#pragma once

#include <atomic>

#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "cache/extent_set.h"
#include "common/status.h"
#include "s3/object_client.h"

namespace bucketfs::cache {

struct SpoolRecord {
  std::string id;
  std::string key;
  std::string base_etag;    // The object the file started as; empty for a new file.
  uint64_t base_limit = 0;  // Bytes of that object still part of the file.
  bool create_only = false;  // O_EXCL: commit with If-None-Match: *.
  uint64_t size = 0;
  std::vector<Extent> present;  // Bytes held in the data file.
  s3::UserMetadata metadata;
  bool closed = false;  // Every writer closed it: safe to upload after a crash.
  // The ETag the object gets when the commit under way lands, journaled just before its
  // final request (PUT or CompleteMultipartUpload); empty when none is under way. A daemon
  // killed after that request landed and before the record went finds this ETag at the
  // key: the next one knows the data is there (and does not take its own object for
  // someone else's change when the base it would fetch or If-Match is gone).
  std::string landing_etag;
  // Set by WriteRecord: larger for every record the spool writes (from the wall clock, and
  // past every record Scan() found). Of two closed records of one key, the later written
  // wins at recovery: a rename over a dirty file journals the moved file under the key
  // before the replaced file's record goes, and a crash between leaves both; the moved
  // file's, the newer, is the one to upload even if the replaced file was created later.
  uint64_t seq = 0;
};

// A multipart upload in the spool's ledger (uploads/).
struct StartedUpload {
  std::string key;
  std::string upload_id;
};

class Spool {
 public:
  // Creates the directories if needed and locks the spool; kBusy if another daemon holds
  // it, kNoSpace / kAccessDenied / kInvalidArgument with the path when it cannot be used.
  static Result<std::unique_ptr<Spool>> Open(const std::string& root, const std::string& bucket);
  ~Spool();
  Spool(const Spool&) = delete;
  Spool& operator=(const Spool&) = delete;

  const std::string& directory() const { return dir_; }

  // A new, empty data file: its id and an O_RDWR descriptor the caller owns.
  Result<std::pair<std::string, int>> CreateData();
  // Opens an existing data file (recovery).
  Result<int> OpenData(const std::string& id) const;
  std::string DataPath(const std::string& id) const;

  // Writes the record of `record.id`, replacing the one there. A record that fits in one
  // page (every small file's) is rewritten in place by one pwrite() at offset 0, padded
  // with spaces (JSON's whitespace) to the old length: a page is copied whole or not at
  // all when the writer is killed, and no inode is created or freed per write. That kept
  // a shell's `printf x > f` (four records per file) from creating four temporary files
  // and freeing four inodes, each freed one a synchronous discard on a `discard`-mounted
  // ext4 disk, while the writer waited in close(). Larger records are written to ID.json.tmp
  // and renamed over the record.
  Status WriteRecord(const SpoolRecord& record) const;
  // Removes the record (the data file stays: an open handle may still use it).
  void RemoveRecord(const std::string& id) const;
  // Removes the data file and the record.
  void Remove(const std::string& id) const;
  // Moves a file's data and record to lost+found/, logging `why`.
  void Quarantine(const std::string& id, const std::string& why) const;

  // Whether the spool of `bucket` under `root` holds files waiting for an upload (journal
  // records), without opening it: another process (a daemon) may hold its lock.
  static bool HoldsFiles(const std::string& root, const std::string& bucket);

  // The ledger of started multipart uploads. NoteUpload is best effort: a failure (a full
  // disk) is logged and costs only the abort after a crash, never the upload itself.
  void NoteUpload(const StartedUpload& upload) const;
  void ForgetUpload(const std::string& upload_id) const;
  // Every readable entry; unreadable ones (cut short by a crash) are removed, as they name
  // no upload that could be aborted.
  std::vector<StartedUpload> NotedUploads() const;

  // Every readable record; unreadable ones are quarantined. Data files without a record
  // (a file unlinked or committed, whose data removal was cut short) are removed.
  std::vector<SpoolRecord> Scan() const;

  // A failed system call on a spool file as a Status: a full disk (ENOSPC, EDQUOT) is
  // kNoSpace naming the spool and what to do, permissions kAccessDenied.
  Status IoError(int err, const std::string& what) const;

  // Bytes free on the spool's filesystem (for the log and the status).
  uint64_t FreeBytes() const;

 private:
  Spool(std::string dir, int lock_fd);

  const std::string dir_;
  const int lock_fd_;
  mutable std::atomic<uint64_t> next_seq_;  // SpoolRecord::seq of the next record written.
};

}  // namespace bucketfs::cache
