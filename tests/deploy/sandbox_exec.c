/* sandbox_exec: runs a program under the seccomp parts of a systemd unit's
 * sandbox, built with libseccomp the way systemd builds them, so that a test
 * sees what the unit's service would see without a running systemd.
 *
 *   sandbox_exec POLICY -- PROGRAM [ARG...]
 *
 * POLICY is a text file the test derives from the unit, one directive a line:
 *   errno N        the error number of a filtered call (SystemCallErrorNumber=)
 *   allow NAME     a call of the allow list (SystemCallFilter=, groups expanded);
 *                  names this architecture does not know are passed over, as
 *                  systemd does
 *   family N       an address family socket() may create (RestrictAddressFamilies=);
 *                  any other fails with EAFNOSUPPORT
 *   mdwe           MemoryDenyWriteExecute=yes
 *   norealtime     RestrictRealtime=yes
 *   user UID GID   the identity to run as (DynamicUser=yes stands for an
 *                  unprivileged one); only when started as root
 * Every filter is loaded after PR_SET_NO_NEW_PRIVS (NoNewPrivileges=yes), each
 * as a filter of its own, as systemd loads them: the kernel applies the most
 * restrictive answer of all.  Exits 127 when the sandbox cannot be set up. */
#define _GNU_SOURCE
#include <errno.h>
#include <grp.h>
#include <sched.h>
#include <seccomp.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/prctl.h>
#include <unistd.h>

#define MAX_FAMILIES 64

static int die(const char *what, int err) {
  fprintf(stderr, "sandbox_exec: %s: %s\n", what, strerror(err < 0 ? -err : err));
  exit(127);
}

/* The allow list: every call not named fails with errno. */
static void load_allow_list(FILE *f, int errnum) {
  scmp_filter_ctx ctx = seccomp_init(SCMP_ACT_ERRNO((uint32_t)errnum));
  if (!ctx) die("seccomp_init", ENOMEM);
  char line[256];
  rewind(f);
  int n = 0;
  while (fgets(line, sizeof line, f)) {
    char name[200];
    if (sscanf(line, "allow %199s", name) != 1) continue;
    int nr = seccomp_syscall_resolve_name(name);
    if (nr == __NR_SCMP_ERROR) continue;
    int rc = seccomp_rule_add(ctx, SCMP_ACT_ALLOW, nr, 0);
    if (rc && rc != -EEXIST) die(name, rc);
    n++;
  }
  if (!n) die("the policy allows no call", EINVAL);
  int rc = seccomp_load(ctx);
  if (rc) die("seccomp_load (allow list)", rc);
  seccomp_release(ctx);
}

/* RestrictAddressFamilies=: socket(family) outside the list fails with
 * EAFNOSUPPORT. */
static void load_families(const int *fam, int n) {
  scmp_filter_ctx ctx = seccomp_init(SCMP_ACT_ALLOW);
  if (!ctx) die("seccomp_init", ENOMEM);
  int top = 0;
  for (int i = 0; i < n; i++)
    if (fam[i] > top) top = fam[i];
  for (int af = 0; af <= top; af++) {
    int ok = 0;
    for (int i = 0; i < n; i++) ok |= fam[i] == af;
    if (ok) continue;
    int rc = seccomp_rule_add(ctx, SCMP_ACT_ERRNO(EAFNOSUPPORT), SCMP_SYS(socket), 1,
                              SCMP_A0(SCMP_CMP_EQ, (scmp_datum_t)af));
    if (rc) die("seccomp_rule_add (socket)", rc);
  }
  int rc = seccomp_rule_add(ctx, SCMP_ACT_ERRNO(EAFNOSUPPORT), SCMP_SYS(socket), 1,
                            SCMP_A0(SCMP_CMP_GT, (scmp_datum_t)top));
  if (rc) die("seccomp_rule_add (socket)", rc);
  if ((rc = seccomp_load(ctx))) die("seccomp_load (families)", rc);
  seccomp_release(ctx);
}

/* MemoryDenyWriteExecute=: no mapping both writable and executable, and no
 * mapping made executable later. */
static void load_mdwe(void) {
  scmp_filter_ctx ctx = seccomp_init(SCMP_ACT_ALLOW);
  if (!ctx) die("seccomp_init", ENOMEM);
  const scmp_datum_t wx = PROT_WRITE | PROT_EXEC;
  int rc = seccomp_rule_add(ctx, SCMP_ACT_ERRNO(EPERM), SCMP_SYS(mmap), 1,
                            SCMP_A2(SCMP_CMP_MASKED_EQ, wx, wx));
  if (!rc)
    rc = seccomp_rule_add(ctx, SCMP_ACT_ERRNO(EPERM), SCMP_SYS(mprotect), 1,
                          SCMP_A2(SCMP_CMP_MASKED_EQ, PROT_EXEC, PROT_EXEC));
  if (!rc)
    rc = seccomp_rule_add(ctx, SCMP_ACT_ERRNO(EPERM), SCMP_SYS(pkey_mprotect), 1,
                          SCMP_A2(SCMP_CMP_MASKED_EQ, PROT_EXEC, PROT_EXEC));
  if (rc) die("seccomp_rule_add (mdwe)", rc);
  if ((rc = seccomp_load(ctx))) die("seccomp_load (mdwe)", rc);
  seccomp_release(ctx);
}

/* RestrictRealtime=: SCHED_OTHER, SCHED_BATCH and SCHED_IDLE only. */
static void load_norealtime(void) {
  scmp_filter_ctx ctx = seccomp_init(SCMP_ACT_ALLOW);
  if (!ctx) die("seccomp_init", ENOMEM);
  const int rt[] = {SCHED_FIFO, SCHED_RR, 6 /* SCHED_DEADLINE */};
  for (unsigned i = 0; i < sizeof rt / sizeof *rt; i++) {
    int rc = seccomp_rule_add(ctx, SCMP_ACT_ERRNO(EPERM), SCMP_SYS(sched_setscheduler), 1,
                              SCMP_A1(SCMP_CMP_MASKED_EQ, ~(scmp_datum_t)SCHED_RESET_ON_FORK &
                                                              0xffffffffu,
                                      (scmp_datum_t)rt[i]));
    if (rc) die("seccomp_rule_add (realtime)", rc);
  }
  int rc = seccomp_load(ctx);
  if (rc) die("seccomp_load (realtime)", rc);
  seccomp_release(ctx);
}

int main(int argc, char **argv) {
  if (argc < 4 || strcmp(argv[2], "--")) {
    fprintf(stderr, "usage: sandbox_exec POLICY -- PROGRAM [ARG...]\n");
    return 127;
  }
  FILE *f = fopen(argv[1], "r");
  if (!f) die(argv[1], errno);
  int errnum = EPERM, nfam = 0, mdwe = 0, norealtime = 0, have_user = 0;
  int fam[MAX_FAMILIES];
  unsigned uid = 0, gid = 0;
  char line[256];
  while (fgets(line, sizeof line, f)) {
    int v;
    if (sscanf(line, "errno %d", &v) == 1) errnum = v;
    else if (sscanf(line, "family %d", &v) == 1 && nfam < MAX_FAMILIES) fam[nfam++] = v;
    else if (!strncmp(line, "mdwe", 4)) mdwe = 1;
    else if (!strncmp(line, "norealtime", 10)) norealtime = 1;
    else if (sscanf(line, "user %u %u", &uid, &gid) == 2) have_user = 1;
  }
  if (have_user && geteuid() == 0) {
    if (setgroups(0, NULL) || setgid(gid) || setuid(uid)) die("dropping to the user", errno);
  }
  if (prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0)) die("PR_SET_NO_NEW_PRIVS", errno);
  if (nfam) load_families(fam, nfam);
  if (mdwe) load_mdwe();
  if (norealtime) load_norealtime();
  load_allow_list(f, errnum);
  fclose(f);
  execvp(argv[3], argv + 3);
  fprintf(stderr, "sandbox_exec: %s: %s\n", argv[3], strerror(errno));
  return 127;
}
