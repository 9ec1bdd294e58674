// SessionGuard: how kernel-cache invalidations reach a FUSE session that may end while they
// run, without either touching a destroyed session or keeping its teardown waiting forever.
//
// Page invalidations run on their own thread (page_invalidations.h), outside any request. A page invalidation
// (notify_inval_inode of a page range) makes the kernel lock each cached page of the inode,
// and a page stays locked while a READ of it is queued or being served. So once the session
// loop has stopped reading requests, an invalidation can wait in the kernel for a READ that
// nobody will answer, and a teardown that only waited for it would wait forever (the daemon
// could not even be killed: the stuck write holds /dev/fuse open, so the connection never
// aborts).
//
// Contract:
//  - Use(fn) calls fn(session) while the session is alive and the guard is not closing, and
//    says whether it did. Any number of Use calls may run at once.
//  - Close(serve_some, patience, give_up): from then on Use calls nothing. It waits until no
//    Use call is running, and while it waits it calls serve_some() again and again, which
//    must answer some of the requests the kernel queued and return within about 100 ms (so
//    that the READs a page invalidation waits for get answered). If that has not ended the
//    wait after `patience`, it calls give_up() once (abort the connection: the kernel then
//    fails every request and unlocks their pages) and goes on waiting. When Close returns,
//    no Use call is running and none will: the session may be destroyed.
//  - Thread-safe; Close is called once, by the thread that ran the session loop.
//  - Free of libfuse: the session is an opaque pointer.
#pragma once

#include <atomic>
#include <chrono>
#include <functional>
#include <shared_mutex>

namespace bucketfs::fs {

class SessionGuard {
 public:
  explicit SessionGuard(void* session) : session_(session) {}

  bool Use(const std::function<void(void*)>& fn);
  void Close(const std::function<void()>& serve_some, std::chrono::milliseconds patience,
             const std::function<void()>& give_up);

 private:
  std::atomic<bool> closing_{false};
  std::shared_mutex mu_;  // Shared by each Use call in progress.
  void* session_;         // Guarded by mu_; null once closed.
};

}  // namespace bucketfs::fs
