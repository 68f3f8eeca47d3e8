/* Test-only LD_PRELOAD shim: holds a process inside SQLite's commit, after the commit's
 * frames are written to the -wal file and before SQLite publishes them in the
 * wal-index (with synchronous=FULL SQLite syncs the -wal in between). While held,
 * Litestream (a separate process reading the -wal file) can ship a transaction that
 * this process has not finished committing; a SIGKILL then leaves a commit that the
 * replica has and that SQLite here may discard.
 *
 * HOLD_WAL_SYNC_PATH: the -wal file whose sync is held (others pass through);
 * HOLD_WAL_SYNC_ARM: a file; once it exists, the next sync of that -wal is held for
 * ever (pause()), after creating HOLD_WAL_SYNC_HELD. Unset: the shim does nothing.
 * Built by tests/e2e/test_xmove_unpublished.py with the system's C compiler. */
#define _GNU_SOURCE
#include <dlfcn.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

static void hold_if_armed(int fd) {
    const char *want = getenv("HOLD_WAL_SYNC_PATH");
    const char *arm = getenv("HOLD_WAL_SYNC_ARM");
    const char *held = getenv("HOLD_WAL_SYNC_HELD");
    if (want == NULL || arm == NULL || held == NULL || access(arm, F_OK) != 0) return;
    char link[64], path[4096];
    snprintf(link, sizeof link, "/proc/self/fd/%d", fd);
    ssize_t n = readlink(link, path, sizeof path - 1);
    if (n <= 0) return;
    path[n] = '\0';
    if (strcmp(path, want) != 0) return;
    int m = open(held, O_CREAT | O_WRONLY, 0600);
    if (m >= 0) close(m);
    for (;;) pause();
}

int fsync(int fd) {
    static int (*real)(int);
    if (real == NULL) real = (int (*)(int))dlsym(RTLD_NEXT, "fsync");
    hold_if_armed(fd);
    return real(fd);
}

int fdatasync(int fd) {
    static int (*real)(int);
    if (real == NULL) real = (int (*)(int))dlsym(RTLD_NEXT, "fdatasync");
    hold_if_armed(fd);
    return real(fd);
}
