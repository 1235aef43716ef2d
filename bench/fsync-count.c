/*
 * fsync-count: an LD_PRELOAD shim that counts the fsync(2) and fdatasync(2) calls of the
 * process it is loaded into (SQLite's durable commits included: better-sqlite3 links SQLite
 * statically but takes fsync from libc), and how long they took, split by the main thread
 * (where better-sqlite3 runs and the event loop waits) and every other thread.
 *
 * The counters live in a 64-byte file named by SLUICE_BENCH_FSYNC_FILE, mapped shared, so the
 * bench reads them from outside at any moment without asking the process. Layout, eight
 * unsigned 64-bit words in host byte order:
 *   0 main-thread calls   1 main-thread ns   2 other-thread calls   3 other-thread ns
 * With SLUICE_BENCH_FSYNC_SKIP=1 the calls return 0 without reaching the disk: only for
 * filling a scratch journal fast, never while measuring. With SLUICE_BENCH_FSYNC_DELAY_US=N
 * every call lasts at least N microseconds (the real call, then a sleep for the rest): a
 * slower disk's flush, such as a gateway's eMMC, emulated on this one (its latency only, not
 * its bandwidth). The time counted includes the sleep.
 *
 * Built by the bench at run time: cc -shared -fPIC -O2 -o fsync-count.so fsync-count.c -ldl
 */
#define _GNU_SOURCE
#include <dlfcn.h>
#include <fcntl.h>
#include <stdint.h>
#include <stdlib.h>
#include <sys/mman.h>
#include <sys/syscall.h>
#include <time.h>
#include <unistd.h>

static uint64_t *counters;
static int skip;
static uint64_t delay_ns;
static pid_t main_pid;
static int (*real_fsync)(int);
static int (*real_fdatasync)(int);

__attribute__((constructor)) static void fsync_count_init(void) {
  real_fsync = (int (*)(int))dlsym(RTLD_NEXT, "fsync");
  real_fdatasync = (int (*)(int))dlsym(RTLD_NEXT, "fdatasync");
  main_pid = getpid();
  const char *skip_env = getenv("SLUICE_BENCH_FSYNC_SKIP");
  skip = skip_env != NULL && skip_env[0] == '1';
  const char *delay_env = getenv("SLUICE_BENCH_FSYNC_DELAY_US");
  if (delay_env != NULL) delay_ns = strtoull(delay_env, NULL, 10) * 1000u;
  const char *path = getenv("SLUICE_BENCH_FSYNC_FILE");
  if (path == NULL) return;
  int fd = open(path, O_RDWR | O_CLOEXEC);
  if (fd < 0) return;
  void *map = mmap(NULL, 64, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
  close(fd);
  if (map != MAP_FAILED) counters = (uint64_t *)map;
}

static uint64_t now_ns(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (uint64_t)ts.tv_sec * 1000000000u + (uint64_t)ts.tv_nsec;
}

static int counted(int (*real)(int), int fd) {
  if (skip) return 0;
  uint64_t start = now_ns();
  int result = real(fd);
  uint64_t took = now_ns() - start;
  if (took < delay_ns) {
    uint64_t rest = delay_ns - took;
    struct timespec ts = {(time_t)(rest / 1000000000u), (long)(rest % 1000000000u)};
    while (nanosleep(&ts, &ts) != 0) {
    }
    took = now_ns() - start;
  }
  if (counters != NULL) {
    int main_thread = (pid_t)syscall(SYS_gettid) == main_pid;
    __atomic_fetch_add(&counters[main_thread ? 0 : 2], 1, __ATOMIC_RELAXED);
    __atomic_fetch_add(&counters[main_thread ? 1 : 3], took, __ATOMIC_RELAXED);
  }
  return result;
}

int fsync(int fd) { return counted(real_fsync, fd); }

int fdatasync(int fd) { return counted(real_fdatasync, fd); }
