// Lease: the single-pod lease kept in the bucket itself (DESIGN.md, "The single-pod lease
// (mountd)"), so two read-write mounts of one bucket exclude each other across nodes with
// no service besides the S3 server.
//
// Protocol:
//  - ProbeConditionalWrites() runs once per mount: without conditional writes honoured by
//    the server, nothing below is exclusive, so a read-write mount must be refused.
//  - The lease object (LeaseOptions::key) holds a JSON LeaseRecord. Acquire creates it with
//    If-None-Match: *, or replaces a released one with If-Match: <its ETag>. A lease held by
//    anyone else (our own host's earlier, crashed mount included: every Lease has a fresh
//    random nonce) is taken over only after its ETag has stayed unchanged for
//    max(TTL, the record's TTL) + margin on OUR monotonic clock. Wall times in the record
//    are for people reading it; no two hosts' clocks are ever compared.
//  - Renew every TTL/3 (next_renewal()) with If-Match: <own ETag>. A 412, or a 404 (the key
//    was deleted; RGW and AWS answer If-Match on a missing key so), means the lease is lost.
//    The owner must also call MarkLost() once valid_until() passes without a successful
//    renew. Either way lost() turns true and the daemon fences itself (EROFS, no further
//    committing request).
//  - Release (after drain and sync) replaces the record with state "released", If-Match.
//
// Contract:
//  - Acquire/Renew/Release are called by one thread (the coordinator's lease loop); the
//    accessors are thread-safe and may be called from any thread at any time.
//  - Every S3 call carries a deadline from its start: LeaseOptions::request_timeout, and at
//    most a sixth of the TTL (not under 1 s), so that a renewal that hangs until its
//    deadline leaves time for another before the lease runs out (a 10 s deadline against a
//    15 s TTL renewed at 5 s would leave none).
//  - Errors are Status; no exception leaves this module (a malformed record is
//    kMalformedResponse, a live holder kBusy, a lost lease kReadOnly).
//  - valid_until() is measured from the START of the successful PUT, not its reply: the
//    server may have stored the record at any moment in between, so the start is the
//    conservative choice for a holder that must stop before a waiter takes over.
#pragma once

#include <chrono>
#include <cstdint>
#include <functional>
#include <mutex>
#include <string>
#include <string_view>

#include "common/clock.h"
#include "common/status.h"
#include "s3/object_client.h"

namespace bucketfs::mountd {

struct LeaseOptions {
  std::string key = ".bucketfs/lease";            // Hidden in the mount by the filesystem.
  std::string probe_prefix = ".bucketfs/probe-";  // Probe key = prefix + random nonce.
  Duration ttl = std::chrono::seconds(30);
  Duration margin = std::chrono::seconds(10);  // Takeover only after ETag unchanged ttl+margin.
  Duration poll = std::chrono::seconds(1);     // How often Acquire re-reads a held lease.
  bool wait_for_stale = true;  // False: a held lease is refused at once, no takeover wait.
  Duration request_timeout = std::chrono::seconds(10);  // Deadline of each S3 call (capped).
};

// Who we are, as written into the record for the person who finds the bucket busy.
struct HolderIdentity {
  std::string holder;      // Pod name or user@host.
  std::string host;        // Node name.
  std::string mountpoint;  // Where this mount is.
};

// The JSON body of the lease object.
struct LeaseRecord {
  std::string holder, host, mountpoint, nonce;
  uint64_t epoch = 0;  // +1 on every acquisition (create, over a released one, takeover).
  int64_t ttl_ms = 0;  // The holder's TTL: a waiter waits at least this long.
  uint64_t renew_seq = 0;
  std::string state;                    // "held" | "released"
  std::string acquired_at, renewed_at;  // ISO-8601 UTC wall times, informative only
                                        // (never compared).
};

std::string EncodeLease(const LeaseRecord& record);
// A body that is not a JSON object with every field of the right type, or whose state is
// neither "held" nor "released", is kMalformedResponse saying which field and why.
Result<LeaseRecord> DecodeLease(std::string_view body);

// 16 lower-case hex characters from std::random_device.
std::string NewNonce();

// Once per mount: If-None-Match: * twice on a fresh probe key (the second must be 412),
// If-Match with a wrong ETag (must be 412), then delete the probe. A server that accepts
// either write gets kNotSupported saying the server ignores conditional writes, so a
// read-write mount cannot be made exclusive, and to mount --read-only instead. Other
// failures (network, permissions) come back as they are, annotated. A probe key that
// cannot be deleted afterwards is logged, not an error: it is harmless junk.
Status ProbeConditionalWrites(s3::ObjectClient& client, Clock& clock, const LeaseOptions& options);

class Lease {
 public:
  // `client` and `clock` must outlive the Lease. The nonce is drawn here.
  Lease(s3::ObjectClient& client, Clock& clock, LeaseOptions options, HolderIdentity me);
  Lease(const Lease&) = delete;
  Lease& operator=(const Lease&) = delete;

  // Takes the lease, waiting for a stale holder if options.wait_for_stale. A live holder
  // (one that renews or that we may not wait for) is kBusy with a message naming the
  // bucket, holder, host, mountpoint, since when, last renewal, when it would be taken over
  // if abandoned, and what to do. progress(line) reports the wait. Calling it while held is
  // kInvalidArgument. A record carrying our own nonce is one our earlier PUT wrote whose
  // reply was lost; it is taken back at once (also when this call's own PUT timed out or
  // got a 5xx: it reads the record once before failing). `stop()`, checked while waiting,
  // ends the wait with kCancelled (a signal: the lease is not taken).
  [[nodiscard]] Status Acquire(const std::function<void(const std::string&)>& progress = {},
                               const std::function<bool()>& stop = {});
  // If-Match own ETag with renew_seq+1. Lost (412/404): kReadOnly, lost() true. Anything
  // else (network, 5xx, timeout): returned unchanged, the lease still counts as held
  // until valid_until(); the caller retries and calls MarkLost() past the deadline.
  [[nodiscard]] Status Renew();
  // If-Match own ETag with state "released"; afterwards held() is false. Lost (412/404):
  // kReadOnly, lost() true. Not held and not lost: nothing to do, OK.
  [[nodiscard]] Status Release();
  // The caller saw valid_until() pass without a successful renew.
  void MarkLost(std::string reason);

  bool held() const;
  bool lost() const;
  std::string lost_reason() const;
  MonoTime valid_until() const;   // Start of the last successful acquire/renew + ttl.
  MonoTime next_renewal() const;  // Start of the last successful acquire/renew + ttl/3.
  LeaseRecord record() const;     // The last record we wrote.
  std::string etag() const;       // Its ETag.
  const std::string& nonce() const { return nonce_; }
  const LeaseOptions& options() const { return options_; }

 private:
  // What one read of the lease key found.
  struct Observed {
    bool exists = false;
    std::string etag;
    bool decoded = false;
    LeaseRecord record;        // When decoded.
    std::string decode_error;  // When exists and not decoded.
  };

  s3::CallOptions Deadline() const;
  // GETs the lease key. Absent is exists == false; a body that does not decode is
  // exists == true, decoded == false (an unknown holder), not an error.
  Result<Observed> Read();
  // PUTs `next` under `condition`; on success installs it as ours (held() follows
  // next.state), valid from the moment the PUT was started.
  Status Write(const LeaseRecord& next, const s3::WriteCondition& condition);
  // Renew/Release: PUT `next` If-Match `etag`. A 412/404 whose re-read shows our own nonce
  // means an earlier PUT of ours landed though its reply was lost (or the client retried
  // one that had landed): that is no loss, so the write is retried once on that ETag.
  Status WriteOwn(LeaseRecord next, std::string etag, std::string_view during);
  LeaseRecord Fresh(uint64_t epoch) const;
  // How long a waiter lets `seen` stay unchanged before taking it over.
  Duration StaleAfter(const Observed& seen) const;
  // The kBusy status for a lease held by someone else.
  Status Busy(const Observed& seen, MonoTime takeover_at, std::string_view why) const;
  // After a 412/404 on our own ETag: records the loss, with who holds the lease now as far
  // as the re-read `seen` can tell, and returns the kReadOnly status.
  Status Lose(std::string_view during, const Status& cause, const Result<Observed>& seen);
  std::string Where() const;  // "bucket B, lease K"

  s3::ObjectClient& client_;
  Clock& clock_;
  const LeaseOptions options_;
  const HolderIdentity me_;
  const std::string nonce_;

  mutable std::mutex mu_;
  bool held_ = false;            // Guarded by mu_.
  bool lost_ = false;            // Guarded by mu_.
  std::string lost_reason_;      // Guarded by mu_.
  LeaseRecord record_;           // Guarded by mu_.
  std::string etag_;             // Guarded by mu_.
  MonoTime last_success_start_;  // Guarded by mu_.
};

}  // namespace bucketfs::mountd
