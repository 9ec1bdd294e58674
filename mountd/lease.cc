#include "mountd/lease.h"

#include <time.h>

#include <algorithm>
#include <cinttypes>
#include <cstdio>
#include <limits>
#include <nlohmann/json.hpp>
#include <optional>
#include <random>
#include <span>
#include <utility>

#include "common/log.h"

namespace bucketfs::mountd {
namespace {

using nlohmann::json;
using std::chrono::duration_cast;
using std::chrono::milliseconds;

// A lease record is a few hundred bytes; anything near this is not one.
constexpr size_t kMaxLeaseBytes = 64 * 1024;
// Conflicting writes Acquire tolerates before it gives up. Each one means another mount
// wrote the key between our read and our PUT; a handful in a row is a fight, not bad luck.
constexpr int kMaxRaces = 8;
// A record's ttl_ms is clamped to this before we wait on it: a damaged or hostile record
// must not make a waiter sleep for years, nor overflow the Duration arithmetic.
constexpr int64_t kMaxRecordTtlMs = 24LL * 3600 * 1000;

constexpr const char* kHeld = "held";
constexpr const char* kReleased = "released";

std::shared_ptr<spdlog::logger> Log() { return Logger("mountd"); }

std::string IsoUtc(WallTime t) {
  const int64_t ms = duration_cast<milliseconds>(t.time_since_epoch()).count();
  int64_t secs = ms / 1000;
  int64_t frac = ms % 1000;
  if (frac < 0) {
    frac += 1000;
    secs -= 1;
  }
  const time_t tt = static_cast<time_t>(secs);
  struct tm parts {};
  gmtime_r(&tt, &parts);
  char date[64];
  std::strftime(date, sizeof date, "%Y-%m-%dT%H:%M:%S", &parts);
  char out[96];
  std::snprintf(out, sizeof out, "%s.%03dZ", date, static_cast<int>(frac));
  return out;
}

// "40s", "1.5s": for messages a person reads.
std::string Secs(Duration d) {
  const int64_t ms = duration_cast<milliseconds>(d).count();
  char out[48];
  if (ms % 1000 == 0) {
    std::snprintf(out, sizeof out, "%" PRId64 "s", ms / 1000);
  } else {
    std::snprintf(out, sizeof out, "%.1fs", static_cast<double>(ms) / 1000.0);
  }
  return out;
}

// A 412 or 404 answer to If-Match on our own ETag: the object is no longer what we wrote.
bool IsNotOurs(const Status& s) {
  return s.code() == ErrorCode::kPreconditionFailed || s.code() == ErrorCode::kNotFound;
}

// An answer to a conditional PUT in Acquire that means someone else wrote the key between
// our read and our PUT (409: RGW's ConditionalRequestConflict for concurrent conditional
// writes): read again and decide again.
bool IsRace(const Status& s) { return IsNotOurs(s) || s.code() == ErrorCode::kConflict; }

Status Malformed(const std::string& why) {
  return Status(ErrorCode::kMalformedResponse, "lease record: " + why);
}

// Field readers for DecodeLease: nothing here throws, whatever the body.
Status ReadString(const json& j, const char* name, std::string& out) {
  const auto it = j.find(name);
  if (it == j.end()) return Malformed(std::string("field \"") + name + "\" is missing");
  if (!it->is_string()) {
    return Malformed(std::string("field \"") + name + "\" is a " + it->type_name() +
                     ", not a string");
  }
  out = it->get<std::string>();
  return Status::Ok();
}

Status ReadUnsigned(const json& j, const char* name, uint64_t& out) {
  const auto it = j.find(name);
  if (it == j.end()) return Malformed(std::string("field \"") + name + "\" is missing");
  if (!it->is_number_unsigned()) {
    return Malformed(std::string("field \"") + name + "\" is " +
                     (it->is_number_integer() ? "negative" : std::string("a ") + it->type_name()) +
                     ", not a non-negative integer");
  }
  out = it->get<uint64_t>();
  return Status::Ok();
}

Status ReadSigned(const json& j, const char* name, int64_t& out) {
  const auto it = j.find(name);
  if (it == j.end()) return Malformed(std::string("field \"") + name + "\" is missing");
  if (!it->is_number_integer()) {
    return Malformed(std::string("field \"") + name + "\" is a " + it->type_name() +
                     ", not an integer");
  }
  if (it->is_number_unsigned() &&
      it->get<uint64_t>() > static_cast<uint64_t>(std::numeric_limits<int64_t>::max())) {
    return Malformed(std::string("field \"") + name + "\" is out of range");
  }
  out = it->get<int64_t>();
  return Status::Ok();
}

std::string Describe(const LeaseRecord& r) {
  return "holder " + r.holder + " on host " + r.host + " (mountpoint " + r.mountpoint + ")";
}

}  // namespace

std::string EncodeLease(const LeaseRecord& record) {
  const json j{{"holder", record.holder},         {"host", record.host},
               {"mountpoint", record.mountpoint}, {"nonce", record.nonce},
               {"epoch", record.epoch},           {"ttl_ms", record.ttl_ms},
               {"renew_seq", record.renew_seq},   {"state", record.state},
               {"acquired_at", record.acquired_at}, {"renewed_at", record.renewed_at}};
  // Host names and mount points come from outside: invalid UTF-8 is replaced rather than
  // thrown on, as nlohmann's default would.
  return j.dump(-1, ' ', false, json::error_handler_t::replace);
}

Result<LeaseRecord> DecodeLease(std::string_view body) {
  const json j = json::parse(body.begin(), body.end(), nullptr, /*allow_exceptions=*/false);
  if (j.is_discarded()) return Malformed("not JSON");
  if (!j.is_object()) return Malformed(std::string("a JSON ") + j.type_name() + ", not an object");
  LeaseRecord r;
  BFS_RETURN_IF_ERROR(ReadString(j, "holder", r.holder));
  BFS_RETURN_IF_ERROR(ReadString(j, "host", r.host));
  BFS_RETURN_IF_ERROR(ReadString(j, "mountpoint", r.mountpoint));
  BFS_RETURN_IF_ERROR(ReadString(j, "nonce", r.nonce));
  BFS_RETURN_IF_ERROR(ReadUnsigned(j, "epoch", r.epoch));
  BFS_RETURN_IF_ERROR(ReadSigned(j, "ttl_ms", r.ttl_ms));
  BFS_RETURN_IF_ERROR(ReadUnsigned(j, "renew_seq", r.renew_seq));
  BFS_RETURN_IF_ERROR(ReadString(j, "state", r.state));
  BFS_RETURN_IF_ERROR(ReadString(j, "acquired_at", r.acquired_at));
  BFS_RETURN_IF_ERROR(ReadString(j, "renewed_at", r.renewed_at));
  if (r.state != kHeld && r.state != kReleased) {
    return Malformed("field \"state\" is \"" + r.state + "\", neither \"held\" nor \"released\"");
  }
  return r;
}

std::string NewNonce() {
  std::random_device rd;
  const uint64_t v = (static_cast<uint64_t>(rd()) << 32) ^ static_cast<uint64_t>(rd());
  char out[24];
  std::snprintf(out, sizeof out, "%016" PRIx64, v);
  return out;
}

Status ProbeConditionalWrites(s3::ObjectClient& client, Clock& clock, const LeaseOptions& options) {
  // A fresh key per probe: two mounts probing at once, or a probe left behind by a killed
  // one, never make each other's If-None-Match fail.
  const std::string key = options.probe_prefix + NewNonce();
  const std::string where = "bucket " + client.bucket() + ", probe key " + key;
  const std::string body = "bucketfs conditional-write probe\n";
  auto deadline = [&] { return s3::CallOptions{.deadline = clock.Now() + options.request_timeout}; };
  auto not_supported = [&](const std::string& accepted) {
    return Status(ErrorCode::kNotSupported,
                  where + ": the S3 server ignores conditional writes (it accepted " + accepted +
                      "), so a read-write mount cannot be made exclusive to one mount and two "
                      "writers could overwrite each other; mount with --read-only instead");
  };

  s3::PutRequest req{.key = key,
                     .body = std::span<const char>(body.data(), body.size()),
                     .content_type = "text/plain",
                     .condition = s3::WriteCondition::CreateOnly()};
  auto created = client.Put(req, deadline());
  if (!created.ok()) {
    Status st = std::move(created).TakeStatus();
    st.Annotate(where + ": probing conditional writes: creating the probe with If-None-Match: *");
    return st;
  }

  Status verdict;
  auto again = client.Put(req, deadline());
  if (again.ok()) {
    verdict = not_supported("If-None-Match: * on a key that exists");
  } else if (again.status().code() != ErrorCode::kPreconditionFailed) {
    verdict = std::move(again).TakeStatus();
    verdict.Annotate(where + ": probing conditional writes: If-None-Match: * on the probe");
  } else {
    // Any ETag but the probe's own: the server must refuse it.
    req.condition = s3::WriteCondition::IfMatch(
        created->etag == "00000000000000000000000000000000" ? "11111111111111111111111111111111"
                                                             : "00000000000000000000000000000000");
    auto mismatched = client.Put(req, deadline());
    if (mismatched.ok()) {
      verdict = not_supported("If-Match with an ETag the object does not have");
    } else if (mismatched.status().code() != ErrorCode::kPreconditionFailed) {
      verdict = std::move(mismatched).TakeStatus();
      verdict.Annotate(where + ": probing conditional writes: If-Match with a wrong ETag");
    }
  }

  // A probe left behind is harmless junk under a hidden prefix; failing the mount for it
  // would be worse than the junk.
  Status deleted = client.Delete(key, deadline());
  if (!deleted.ok()) {
    Log()->warn("{}: could not delete the conditional-write probe: {}", where, deleted.ToString());
  }
  if (verdict.ok()) {
    Log()->debug("{}: the server honours conditional writes", where);
  } else {
    Log()->error("{}", verdict.ToString());
  }
  return verdict;
}

namespace {

// A sixth of the TTL at most (not under 1 s): see the contract in lease.h.
LeaseOptions WithCappedRequestTimeout(LeaseOptions options) {
  options.request_timeout = std::min<Duration>(
      options.request_timeout, std::max<Duration>(std::chrono::seconds(1), options.ttl / 6));
  return options;
}

}  // namespace

Lease::Lease(s3::ObjectClient& client, Clock& clock, LeaseOptions options, HolderIdentity me)
    : client_(client),
      clock_(clock),
      options_(WithCappedRequestTimeout(std::move(options))),
      me_(std::move(me)),
      nonce_(NewNonce()) {}

std::string Lease::Where() const { return "bucket " + client_.bucket() + ", lease " + options_.key; }

s3::CallOptions Lease::Deadline() const {
  return s3::CallOptions{.deadline = clock_.Now() + options_.request_timeout};
}

Result<Lease::Observed> Lease::Read() {
  std::string buffer(kMaxLeaseBytes, '\0');
  auto got = client_.Get(s3::GetRequest{.key = options_.key}, std::span<char>(buffer), Deadline());
  Observed seen;
  if (!got.ok()) {
    if (got.status().code() == ErrorCode::kNotFound) return seen;
    if (got.status().code() == ErrorCode::kInternal) {
      // The client refuses a reply larger than the buffer; such an object is no lease
      // record, but it still occupies the key, with an ETag we can watch.
      auto head = client_.Head(s3::HeadRequest{.key = options_.key}, Deadline());
      if (head.ok() && head->size > kMaxLeaseBytes) {
        seen.exists = true;
        seen.etag = head->etag;
        seen.decode_error = "the object is " + std::to_string(head->size) +
                            " bytes, far larger than a lease record";
        return seen;
      }
    }
    Status st = std::move(got).TakeStatus();
    st.Annotate(Where() + ": reading the lease");
    return st;
  }
  seen.exists = true;
  seen.etag = got->info.etag;
  auto decoded = DecodeLease(std::string_view(buffer.data(), got->bytes_read));
  if (decoded.ok()) {
    seen.decoded = true;
    seen.record = std::move(decoded).value();
  } else {
    seen.decode_error = decoded.status().message();
  }
  return seen;
}

Status Lease::Write(const LeaseRecord& next, const s3::WriteCondition& condition) {
  const std::string body = EncodeLease(next);
  const s3::PutRequest req{.key = options_.key,
                           .body = std::span<const char>(body.data(), body.size()),
                           .content_type = "application/json",
                           .condition = condition};
  // Taken before the request leaves: the server may store the record at any moment until
  // the reply, and a waiter's clock starts no earlier than that.
  const MonoTime start = clock_.Now();
  auto put = client_.Put(req, s3::CallOptions{.deadline = start + options_.request_timeout});
  if (!put.ok()) return std::move(put).TakeStatus();
  std::lock_guard lock(mu_);
  held_ = next.state == kHeld;
  record_ = next;
  etag_ = put->etag;
  if (held_) last_success_start_ = start;
  return Status::Ok();
}

LeaseRecord Lease::Fresh(uint64_t epoch) const {
  LeaseRecord r;
  r.holder = me_.holder;
  r.host = me_.host;
  r.mountpoint = me_.mountpoint;
  r.nonce = nonce_;
  r.epoch = epoch;
  r.ttl_ms = duration_cast<milliseconds>(options_.ttl).count();
  r.renew_seq = 0;
  r.state = kHeld;
  r.acquired_at = IsoUtc(clock_.WallNow());
  r.renewed_at = r.acquired_at;
  return r;
}

Duration Lease::StaleAfter(const Observed& seen) const {
  Duration ttl = options_.ttl;
  if (seen.decoded) {
    const int64_t ms = std::clamp<int64_t>(seen.record.ttl_ms, 0, kMaxRecordTtlMs);
    ttl = std::max<Duration>(ttl, milliseconds(ms));
  }
  return ttl + options_.margin;
}

Status Lease::Busy(const Observed& seen, MonoTime takeover_at, std::string_view why) const {
  std::string who;
  if (seen.decoded) {
    const LeaseRecord& r = seen.record;
    who = "is held by " + Describe(r) + " since " + r.acquired_at + ", last renewed " +
          r.renewed_at + " (epoch " + std::to_string(r.epoch) + ")";
  } else {
    who = "is held by an unknown holder (the lease object is not a readable lease record: " +
          seen.decode_error + ")";
  }
  const MonoTime now = clock_.Now();
  const Duration left = takeover_at > now ? takeover_at - now : Duration::zero();
  const std::string when = IsoUtc(clock_.WallNow() + duration_cast<WallTime::duration>(left));
  std::string msg = Where() + ": the lease " + who;
  if (!why.empty()) msg += "; " + std::string(why);
  msg += ". If that mount was abandoned, a mount that waits for it would take it over at " +
         when + " (after " + Secs(StaleAfter(seen)) +
         " without a renewal). To move the mount here, run `bucketfs unmount` there first.";
  return Status(ErrorCode::kBusy, std::move(msg));
}

Status Lease::Acquire(const std::function<void(const std::string&)>& progress,
                     const std::function<bool()>& stop) {
  {
    std::lock_guard lock(mu_);
    if (held_) {
      return Status(ErrorCode::kInvalidArgument,
                    Where() + ": Acquire called while the lease is already held");
    }
    lost_ = false;
    lost_reason_.clear();
  }
  auto report = [&](const std::string& line) {
    Log()->info("{}", line);
    if (progress) progress(line);
  };

  // The held lease we are waiting on: its ETag, and when it may be taken over, counted on
  // our monotonic clock from the first time we saw that ETag.
  struct Watch {
    std::string etag;
    MonoTime takeover_at;
  };
  std::optional<Watch> watch;
  int races = 0;
  bool rechecked_lost_reply = false;

  for (;;) {
    BFS_ASSIGN_OR_RETURN(Observed seen, Read());
    s3::WriteCondition condition;
    uint64_t epoch = 1;
    std::string how;
    if (!seen.exists) {
      condition = s3::WriteCondition::CreateOnly();
      epoch = 1;
      how = "created";
    } else if (seen.decoded && seen.record.state == kReleased) {
      condition = s3::WriteCondition::IfMatch(seen.etag);
      epoch = seen.record.epoch + 1;
      how = "acquired over the lease released by " + Describe(seen.record);
    } else if (seen.decoded && seen.record.nonce == nonce_) {
      // Nobody else has our nonce: this is a PUT of ours whose reply we never got (or
      // that the client retried after it had landed). It is already ours.
      condition = s3::WriteCondition::IfMatch(seen.etag);
      epoch = seen.record.epoch;
      how = "took back our own record, whose write had landed without a reply";
    } else {
      const MonoTime now = clock_.Now();
      if (watch && watch->etag != seen.etag) {
        // Released or deleted would have been handled above: the holder wrote a new held
        // record (a renew, or a takeover by a third mount), so it is alive.
        return Busy(seen, now + StaleAfter(seen),
                    "it was renewed while we waited, so its holder is alive");
      }
      if (!watch) {
        watch = Watch{seen.etag, now + StaleAfter(seen)};
        if (!seen.decoded) {
          Log()->warn("{}: the lease object is not a readable lease record ({}); treating it as "
                      "held by an unknown holder",
                      Where(), seen.decode_error);
        }
        if (!options_.wait_for_stale) return Busy(seen, watch->takeover_at, {});
        const std::string holder =
            seen.decoded ? Describe(seen.record) + ", last renewed " + seen.record.renewed_at
                         : "an unknown holder (unreadable lease record)";
        report(Where() + ": the lease is held by " + holder + "; waiting until " +
               IsoUtc(clock_.WallNow() + duration_cast<WallTime::duration>(watch->takeover_at - now)) +
               " (" + Secs(watch->takeover_at - now) +
               ") for it to be released, taking it over then if it was not renewed");
      }
      if (now < watch->takeover_at) {
        if (stop && stop()) {
          return Status(ErrorCode::kCancelled,
                        Where() + ": stopped while waiting for the lease; it was not taken");
        }
        clock_.SleepUntil(std::min(now + options_.poll, watch->takeover_at));
        continue;
      }
      condition = s3::WriteCondition::IfMatch(seen.etag);
      epoch = seen.decoded ? seen.record.epoch + 1 : 1;
      how = seen.decoded ? "took over the abandoned lease of " + Describe(seen.record)
                         : "took over the lease object that was not a lease record";
      report(Where() + ": the lease was not renewed for " + Secs(StaleAfter(seen)) +
             "; taking it over");
    }

    Status st = Write(Fresh(epoch), condition);
    if (st.ok()) {
      Log()->info("{}: {} (epoch {}, nonce {})", Where(), how, epoch, nonce_);
      return st;
    }
    if (!IsRace(st)) {
      // A timeout or a 5xx may come after the PUT landed: a record with our nonce is ours,
      // and left there it would keep every pod (this one too, next time) waiting TTL +
      // margin for a holder that never renews. Read once; the loop takes it back.
      if (st.retryable() && !rechecked_lost_reply) {
        rechecked_lost_reply = true;
        auto landed = Read();
        if (landed.ok() && landed->decoded && landed->record.nonce == nonce_) continue;
      }
      st.Annotate(Where() + ": writing the lease");
      return st;
    }
    if (++races > kMaxRaces) {
      return Status(ErrorCode::kBusy,
                    Where() + ": another mount kept writing the lease between our reads and "
                              "writes " + std::to_string(kMaxRaces) +
                        " times in a row; gave up (last answer: " + st.ToString() + ")");
    }
    Log()->info("{}: another mount wrote the lease first ({}); reading it again", Where(),
                st.ToString());
  }
}

Status Lease::WriteOwn(LeaseRecord next, std::string etag, std::string_view during) {
  for (int attempt = 0;; ++attempt) {
    Status st = Write(next, s3::WriteCondition::IfMatch(etag));
    if (st.ok()) return st;
    if (!IsNotOurs(st)) {
      st.Annotate(Where() + ": " + std::string(during));
      return st;
    }
    Result<Observed> seen = Read();
    if (!seen.ok()) {
      // Refused, and who holds the lease now is unknown: the refusal may be our own earlier
      // write that landed with its reply lost. Not a loss yet: the caller tries again, and
      // a lease not renewed by its deadline is lost then (the coordinator's TendLease).
      return Status(seen.status().code(),
                    Where() + ": " + std::string(during) + " was refused (" +
                        std::string(ErrorCodeName(st.code())) +
                        ") and reading the lease to see by whom failed: " +
                        seen.status().message(),
                    /*retryable=*/true);
    }
    // Our own write that landed unseen may be behind more than one refusal (a retry inside
    // the client, then ours): taken back a few times, never in a loop.
    if (attempt < 3 && seen->decoded && seen->record.nonce == nonce_) {
      if (seen->record.state == next.state && next.state == kReleased) {
        // Our release landed; its reply was lost.
        std::lock_guard lock(mu_);
        held_ = false;
        record_ = seen->record;
        etag_ = seen->etag;
        return Status::Ok();
      }
      if (seen->record.state == kHeld) {
        Log()->info("{}: an earlier write of ours landed though its reply was lost; {} again "
                    "on its ETag",
                    Where(), during);
        next.renew_seq = std::max(next.renew_seq, seen->record.renew_seq + 1);
        etag = seen->etag;
        continue;
      }
    }
    return Lose(during, st, seen);
  }
}

Status Lease::Lose(std::string_view during, const Status& cause, const Result<Observed>& seen) {
  std::string now;
  if (!seen.ok()) {
    now = "who holds it now is unknown (" + seen.status().ToString() + ")";
  } else if (!seen->exists) {
    now = "the lease object was deleted";
  } else if (!seen->decoded) {
    now = "the lease object was overwritten with something that is not a lease record (" +
          seen->decode_error + ")";
  } else if (seen->record.state == kReleased) {
    now = "it was released by " + Describe(seen->record) + " (epoch " +
          std::to_string(seen->record.epoch) + ")";
  } else {
    now = "it is now held by " + Describe(seen->record) + " since " + seen->record.acquired_at +
          " (epoch " + std::to_string(seen->record.epoch) + ")";
  }
  const std::string reason = std::string(during) + " was refused (" +
                             std::string(ErrorCodeName(cause.code())) + "): " + now;
  {
    std::lock_guard lock(mu_);
    lost_ = true;
    held_ = false;
    lost_reason_ = reason;
  }
  Log()->error("{}: the lease was lost: {}", Where(), reason);
  return Status(ErrorCode::kReadOnly,
                Where() + ": the lease was lost (" + reason +
                    "); this mount is fenced: writes fail with EROFS and nothing more is "
                    "committed");
}

Status Lease::Renew() {
  LeaseRecord next;
  std::string etag;
  {
    std::lock_guard lock(mu_);
    if (lost_) {
      return Status(ErrorCode::kReadOnly, Where() + ": the lease was lost (" + lost_reason_ + ")");
    }
    if (!held_) return Status(ErrorCode::kInvalidArgument, Where() + ": Renew without the lease");
    next = record_;
    etag = etag_;
  }
  next.renew_seq += 1;
  next.renewed_at = IsoUtc(clock_.WallNow());
  return WriteOwn(std::move(next), std::move(etag), "renewing the lease");
}

Status Lease::Release() {
  LeaseRecord next;
  std::string etag;
  {
    std::lock_guard lock(mu_);
    if (lost_) {
      return Status(ErrorCode::kReadOnly, Where() + ": the lease was lost (" + lost_reason_ + ")");
    }
    if (!held_) return Status::Ok();
    next = record_;
    etag = etag_;
  }
  next.state = kReleased;
  Status st = WriteOwn(std::move(next), std::move(etag), "releasing the lease");
  if (st.ok()) Log()->info("{}: released", Where());
  return st;
}

void Lease::MarkLost(std::string reason) {
  {
    std::lock_guard lock(mu_);
    if (lost_) return;
    lost_ = true;
    held_ = false;
    lost_reason_ = reason;
  }
  Log()->error("{}: the lease was lost: {}", Where(), reason);
}

bool Lease::held() const {
  std::lock_guard lock(mu_);
  return held_;
}

bool Lease::lost() const {
  std::lock_guard lock(mu_);
  return lost_;
}

std::string Lease::lost_reason() const {
  std::lock_guard lock(mu_);
  return lost_reason_;
}

MonoTime Lease::valid_until() const {
  std::lock_guard lock(mu_);
  return last_success_start_ + options_.ttl;
}

MonoTime Lease::next_renewal() const {
  std::lock_guard lock(mu_);
  return last_success_start_ + options_.ttl / 3;
}

LeaseRecord Lease::record() const {
  std::lock_guard lock(mu_);
  return record_;
}

std::string Lease::etag() const {
  std::lock_guard lock(mu_);
  return etag_;
}

}  // namespace bucketfs::mountd
