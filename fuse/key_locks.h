// KeyLocks: keeps the start of a file's writing out of a rename or unlink of its key.
//
// A write open looks at a file's key (its inode's path, the object's HEAD) and then starts
// the file's dirty state at that key; a file rename moves the dirty state, copies the
// object and deletes the old key; an unlink holds back or drops the dirty state and
// deletes the key. The kernel does not order these (an open holds no lock on the name),
// and the daemon serves them on several threads. Interleaved, a write open would start
// writing at a key that was just renamed or deleted: its data would be committed under
// the old name, or bring back a file that was removed, and never reach the file the
// descriptor belongs to.
//
// Contract:
//  - Share(key) waits while an Exclusive() holds `key` or waits for it, then holds `key`
//    shared (any number of write opens of one key run together) until the Hold goes.
//  - Exclusive(keys) waits until none of `keys` is held, then holds all of them at once
//    (never one by one: two renames of crossed keys cannot deadlock) until the Hold goes.
//    A waiting Exclusive() stops new Share()s of its keys, so a stream of opens cannot
//    keep a rename out forever.
//  - No deadlock as long as a thread holds at most one Hold at a time and never waits for
//    a PrefixGate while it holds one (callers enter the gate first, then take the key).
//  - Thread-safe. Unrelated keys never wait for each other.
#pragma once

#include <condition_variable>
#include <map>
#include <mutex>
#include <string>
#include <utility>
#include <vector>

#include "fuse/keyed_hold.h"

namespace bucketfs::fs {

class KeyLocks {
 public:
  using Hold = KeyedHold<KeyLocks>;

  Hold Share(const std::string& key);
  Hold Exclusive(std::vector<std::string> keys);

  // How many keys are held or waited for (0 once every Hold went: the map does not grow).
  size_t tracked();

 private:
  struct State {
    int shared = 0;             // Share()s holding the key.
    bool exclusive = false;     // An Exclusive() holds it.
    int exclusive_waiters = 0;  // Exclusive()s waiting for it.
  };
  friend Hold;
  void Release(const std::vector<std::string>& keys, bool exclusive);
  // Requires mu_. Drops the key's entry once nobody holds or waits for it.
  void Prune(std::map<std::string, State>::iterator it);

  std::mutex mu_;
  std::condition_variable changed_;
  std::map<std::string, State> keys_;
};

}  // namespace bucketfs::fs
