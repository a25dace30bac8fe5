/*
 * orch-monitor: what stays of a container's shim while the container runs.
 *
 * The Python shim (shim.py) forks the container's PID 1, moves it into its
 * cgroup and execs this program in its own place while the child builds the
 * container's root: same pid, still the parent of the container. A Python process costs about 3 MiB of memory per
 * container even when forked copy-on-write; this one costs a few pages. It
 *
 *   0. waits for the container's exec (the child's error pipe): writes
 *      started.json when it happened, or exit.json with reason StartError and
 *      the child's message when it did not; then closes the Runtime's notify
 *      pipe, so its start() returns;
 *   1. copies the container's stdout and stderr pipes into the log file in
 *      kubelet's CRI log format ("<RFC3339Nano> <stream> <F|P> <content>\n"),
 *      cutting lines longer than 16 KiB into P pieces and rotating the file by
 *      size as kubelet's containerLogMaxSize/containerLogMaxFiles do;
 *   2. after the container's PID 1 has exited and both pipes are drained (or
 *      DRAIN_MS after the exit, if something else still holds a pipe), reaps it;
 *   3. writes the exit record (exit.json, atomically) after the log's last
 *      byte: exit code as Docker and Kubernetes report it (128 + signal for a
 *      signal), and reason OOMKilled when the cgroup's OOM counter moved;
 *   4. kills whatever is left in the container's cgroups, and exits.
 *
 *   orch-monitor --pid PID --stdout FD --stderr FD --log PATH --exit-file PATH
 *                [--error-fd FD --started-file PATH] [--notify-fd FD]
 *                [--log-max-size N] [--log-max-files N] [--oom-events FILE]
 *                [--oom-failcnt FILE] [--cgroup DIR]... [--cgroup-kill FILE]
 *
 * The log format and rotation rules are logs.py's (its docstring is the
 * contract; the reader there parses what this writes), the exit record is
 * shim.py's, and the OOM rule is cgroups.py's CgroupDriver.oom_killed, whose
 * oom_evidence() names the files passed here. The monitor never blocks the
 * container: one poll over both pipes, and a failing write (disk full) drops
 * those lines, counted and reported on stderr (shim.log) at most every 30 s.
 */
#define _GNU_SOURCE
#include <dirent.h>
#include <errno.h>
#include <getopt.h>
#include <fcntl.h>
#include <limits.h>
#include <poll.h>
#include <signal.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#define MAX_LINE (16 * 1024)   /* logs.MAX_LINE: longest content of one entry */
#define READ_SIZE (64 * 1024)  /* logs.READ_SIZE: bytes read from one pipe per round */
#define DRAIN_MS 2000          /* logs.DRAIN_TIMEOUT */
#define TS_LEN 30              /* 2026-11-27T19:48:12.123456789Z */
#define ENTRY_MAX (TS_LEN + 10 + MAX_LINE + 1)
#define STAGE_SIZE (READ_SIZE + 2 * ENTRY_MAX)
#define REPORT_EVERY_S 30

struct stream {
    int fd;              /* -1 once at EOF */
    const char *name;    /* "stdout" or "stderr" */
    size_t len;          /* bytes of an unfinished line in buf */
    char buf[MAX_LINE];
};

struct log {
    const char *path;
    int fd;
    long long size, max_size, dropped; /* size: bytes in the current file */
    int max_files;
    time_t reported_at;
    size_t staged;
    char stage[STAGE_SIZE];
};

static struct log out;
static struct stream streams[2];
static char readbuf[READ_SIZE];
static char ts[TS_LEN + 1];

static void warn(const char *fmt, ...) {
    va_list ap;
    va_start(ap, fmt);
    fprintf(stderr, "orch-monitor[%d]: ", (int)getpid());
    vfprintf(stderr, fmt, ap);
    fputc('\n', stderr);
    va_end(ap);
}

static void stamp(void) {
    struct timespec now;
    struct tm tm;
    clock_gettime(CLOCK_REALTIME, &now);
    gmtime_r(&now.tv_sec, &tm);
    size_t n = strftime(ts, sizeof ts, "%Y-%m-%dT%H:%M:%S", &tm);
    snprintf(ts + n, sizeof ts - n, ".%09ldZ", now.tv_nsec % 1000000000L);
}

/* Never fails: a monitor that died on a full disk would lose the exit status,
 * and the container would block on its full pipes. */
static void failed(const char *what) {
    time_t now = time(NULL);
    if (now - out.reported_at >= REPORT_EVERY_S) {
        out.reported_at = now;
        warn("container log: %s %s: %s; %lld bytes of output dropped so far", what, out.path,
             strerror(errno), out.dropped);
    }
}

static int open_log(void) {
    struct stat st;
    out.fd = open(out.path, O_WRONLY | O_APPEND | O_CREAT | O_CLOEXEC, 0640);
    if (out.fd < 0) {
        failed("open");
        return -1;
    }
    out.size = fstat(out.fd, &st) == 0 ? st.st_size : 0;
    return 0;
}

static void flush_stage(void) {
    size_t done = 0;
    if (out.staged == 0)
        return;
    if (out.fd < 0 && open_log() < 0) {
        out.dropped += out.staged;
        out.staged = 0;
        return;
    }
    while (done < out.staged) {
        ssize_t n = write(out.fd, out.stage + done, out.staged - done);
        if (n < 0 && errno == EINTR)
            continue;
        if (n <= 0) {
            out.dropped += out.staged - done;
            failed("write");
            break;
        }
        done += n;
        out.size += n;
    }
    out.staged = 0;
}

/* container.log -> .1 -> .2 ...; the oldest beyond max_files - 1 is deleted. */
static void rotate(void) {
    char from[PATH_MAX], to[PATH_MAX];
    int keep = out.max_files - 1;
    if (out.fd >= 0)
        close(out.fd);
    out.fd = -1;
    snprintf(to, sizeof to, "%s.%d", out.path, keep);
    if (unlink(to) < 0 && errno != ENOENT)
        failed("rotate");
    for (int i = keep - 1; i >= 1; i--) {
        snprintf(from, sizeof from, "%s.%d", out.path, i);
        snprintf(to, sizeof to, "%s.%d", out.path, i + 1);
        if (rename(from, to) < 0 && errno != ENOENT)
            failed("rotate");
    }
    snprintf(to, sizeof to, "%s.1", out.path);
    if (rename(out.path, to) < 0 && errno != ENOENT)
        failed("rotate");
    open_log();
}

/* One CRI entry; files only ever hold whole entries, so rotate before one
 * that would take the file past max_size (unless the file is still empty). */
static void entry(const struct stream *s, char tag, const char *a, size_t alen, const char *b, size_t blen) {
    long long need = TS_LEN + 1 + strlen(s->name) + 3 + alen + blen + 1;
    long long staged = (long long)out.staged;
    if (staged + need + out.size > out.max_size && staged + out.size > 0) {
        flush_stage();
        rotate();
    }
    if (out.staged + (size_t)need > sizeof out.stage)
        flush_stage();
    char *p = out.stage + out.staged;
    p += sprintf(p, "%s %s %c ", ts, s->name, tag);
    memcpy(p, a, alen);
    memcpy(p + alen, b, blen);
    p[alen + blen] = '\n';
    out.staged += need;
}

/* logs.LineSplitter: full lines are F entries, 16 KiB without a newline a P one. */
static void feed(struct stream *s, const char *d, size_t n) {
    while (n > 0) {
        size_t window = MAX_LINE - s->len + 1;
        const char *nl = memchr(d, '\n', n < window ? n : window);
        if (nl) {
            size_t i = nl - d;
            entry(s, 'F', s->buf, s->len, d, i);
            s->len = 0;
            d += i + 1;
            n -= i + 1;
        } else if (s->len + n >= MAX_LINE) {
            size_t k = MAX_LINE - s->len;
            entry(s, 'P', s->buf, s->len, d, k);
            s->len = 0;
            d += k;
            n -= k;
        } else {
            memcpy(s->buf + s->len, d, n);
            s->len += n;
            n = 0;
        }
    }
}

static void finish(struct stream *s) {
    if (s->len)
        entry(s, 'P', s->buf, s->len, "", 0);
    s->len = 0;
    close(s->fd);
    s->fd = -1;
}

static long now_ms(void) {
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return t.tv_sec * 1000L + t.tv_nsec / 1000000L;
}

/* Copy both pipes into the log until both are at EOF, or DRAIN_MS after the
 * container's PID 1 (pidfd) has exited. */
static void pump(int pidfd) {
    long exited_at = -1;
    for (;;) {
        struct pollfd fds[3];
        int nfds = 0, timeout = -1;
        for (int i = 0; i < 2; i++)
            if (streams[i].fd >= 0)
                fds[nfds++] = (struct pollfd){.fd = streams[i].fd, .events = POLLIN};
        if (nfds == 0)
            return;
        if (pidfd >= 0 && exited_at < 0)
            fds[nfds++] = (struct pollfd){.fd = pidfd, .events = POLLIN};
        if (exited_at >= 0) {
            timeout = (int)(exited_at + DRAIN_MS - now_ms());
            if (timeout <= 0)
                return;
        }
        int ready = poll(fds, nfds, timeout);
        if (ready < 0 && errno == EINTR)
            continue;
        if (ready < 0) {
            warn("poll: %s", strerror(errno));
            return;
        }
        stamp();
        for (int j = 0; j < nfds; j++) {
            if (!fds[j].revents)
                continue;
            if (fds[j].fd == pidfd) {
                exited_at = now_ms();
                continue;
            }
            struct stream *s = fds[j].fd == streams[0].fd ? &streams[0] : &streams[1];
            ssize_t n = read(s->fd, readbuf, sizeof readbuf);
            if (n < 0 && (errno == EAGAIN || errno == EINTR))
                continue;
            if (n < 0)
                warn("container %s pipe: read failed: %s", s->name, strerror(errno));
            if (n <= 0)
                finish(s);
            else
                feed(s, readbuf, n);
        }
        flush_stage();
    }
}

static long parse_num(const char *text, const char *what, long min) {
    char *end;
    errno = 0;
    long v = strtol(text, &end, 10);
    if (errno || *end || end == text || v < min) {
        warn("--%s: %s is not a number >= %ld", what, text, min);
        exit(2);
    }
    return v;
}

/* The first number after "KEY " on a line of a cgroup keyed file; -1 if absent. */
static long long keyed(const char *path, const char *key) {
    char line[256];
    long long value = -1;
    size_t klen = strlen(key);
    FILE *f = path ? fopen(path, "re") : NULL;
    if (!f)
        return -1;
    while (fgets(line, sizeof line, f))
        if (strncmp(line, key, klen) == 0 && line[klen] == ' ')
            value = strtoll(line + klen + 1, NULL, 10);
    fclose(f);
    return value;
}

/* cgroups.py CgroupDriver.oom_killed: the oom_kill counter (v2 memory.events,
 * v1 memory.oom_control since Linux 4.13); without it, on v1, a hit limit
 * (failcnt) together with a SIGKILLed main process. */
static int oom_killed(const char *events, const char *failcnt, int sigkilled) {
    long long kills = keyed(events, "oom_kill");
    if (kills >= 0)
        return kills > 0;
    if (!failcnt || !sigkilled)
        return 0;
    FILE *f = fopen(failcnt, "re");
    long long hits = 0;
    if (f) {
        if (fscanf(f, "%lld", &hits) != 1)
            hits = 0;
        fclose(f);
    }
    return hits > 0;
}

/* A file a reader sees whole or not at all (shim.write_json_atomic); fsync'd if asked. */
static void write_atomic(const char *path, const char *body, size_t len, int sync) {
    char tmp[PATH_MAX];
    const char *slash = strrchr(path, '/');
    int dirlen = slash ? (int)(slash - path + 1) : 0;
    snprintf(tmp, sizeof tmp, "%.*s.%s.tmp", dirlen, path, slash ? slash + 1 : path);
    int fd = open(tmp, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
    if (fd < 0 || write(fd, body, len) != (ssize_t)len || (sync && fsync(fd) < 0) || close(fd) < 0 ||
        rename(tmp, path) < 0)
        warn("writing %s: %s", path, strerror(errno));
}

static void rfc3339_now(char *out, size_t size) {
    time_t now = time(NULL);
    struct tm tm;
    gmtime_r(&now, &tm);
    strftime(out, size, "%Y-%m-%dT%H:%M:%SZ", &tm);
}

/* TEXT as a JSON string: quotes, backslashes and control characters escaped,
 * well-formed UTF-8 kept, any other byte replaced with '?' (json.loads must take it). */
static void json_string(char *out, size_t size, const char *text) {
    size_t o = 0;
    const unsigned char *t = (const unsigned char *)text;
    out[o++] = '"';
    while (*t && o + 8 < size) {
        int n = *t < 0x80 ? 1 : (*t & 0xE0) == 0xC0 ? 2 : (*t & 0xF0) == 0xE0 ? 3 : (*t & 0xF8) == 0xF0 ? 4 : 0;
        for (int k = 1; k < n; k++)
            if ((t[k] & 0xC0) != 0x80)
                n = 0;
        if (n == 0) {
            out[o++] = '?';
            t++;
        } else if (*t == '"' || *t == '\\') {
            out[o++] = '\\';
            out[o++] = (char)*t++;
        } else if (*t < 0x20) {
            o += snprintf(out + o, size - o, "\\u%04x", *t++);
        } else {
            memcpy(out + o, t, n);
            o += n;
            t += n;
        }
    }
    out[o++] = '"';
    out[o] = '\0';
}

/* The exit record (shim.py's exit.json): the code as Kubernetes reports it. */
static void write_exit(const char *path, int status, const char *events, const char *failcnt) {
    char finished[32], body[512];
    int sig = -1, code;
    if (status == -1) {
        code = 255; /* runtime.LOST_EXIT_CODE */
    } else if (WIFSIGNALED(status)) {
        sig = WTERMSIG(status);
        code = 128 + sig;
    } else {
        code = WEXITSTATUS(status);
    }
    const char *reason = "Error";
    if (code == 0) {
        reason = "Completed";
    } else if (status != -1) {
        int sigkilled = sig == SIGKILL || code == 128 + SIGKILL;
        int oom = oom_killed(events, failcnt, sigkilled);
        if (!oom && sigkilled) {
            /* The OOM killer bumps its counter just after sending SIGKILL; a
             * victim other than the allocating task can be reaped first. */
            usleep(50 * 1000);
            oom = oom_killed(events, failcnt, sigkilled);
        }
        if (oom)
            reason = "OOMKilled";
    }
    rfc3339_now(finished, sizeof finished);
    char sigtext[16] = "null";
    if (sig >= 0)
        snprintf(sigtext, sizeof sigtext, "%d", sig);
    int len = snprintf(body, sizeof body,
                       "{\"exitCode\": %d, \"signal\": %s, \"finishedAt\": \"%s\", \"reason\": \"%s\", "
                       "\"message\": %s}\n", code, sigtext, finished, reason,
                       status == -1 ? "\"the container's monitor could not collect its exit status\"" : "null");
    write_atomic(path, body, len, 1);
}

/* A start error (the child's text on the error pipe): exit.json with reason StartError
 * and the child's exit code where it gave one (shim._write_start_error). */
static void write_start_error(const char *path, int status, const char *text) {
    char finished[32], message[4 * 4096], body[sizeof message + 256];
    int code = WIFEXITED(status) && WEXITSTATUS(status) > 0 ? WEXITSTATUS(status) : 127;
    rfc3339_now(finished, sizeof finished);
    json_string(message, sizeof message, text);
    int len = snprintf(body, sizeof body,
                       "{\"exitCode\": %d, \"signal\": null, \"finishedAt\": \"%s\", \"reason\": \"StartError\", "
                       "\"message\": %s}\n", code, finished, message);
    write_atomic(path, body, len, 1);
}

/* Field 22 of /proc/PID/stat (start time in clock ticks); -1 if unreadable.
 * Gotcha: field 2 (comm) may hold spaces and ')', so count from the last ')'. */
static long long proc_start_time(pid_t pid) {
    char path[64], buf[1024];
    snprintf(path, sizeof path, "/proc/%d/stat", (int)pid);
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0)
        return -1;
    ssize_t n = read(fd, buf, sizeof buf - 1);
    close(fd);
    if (n <= 0)
        return -1;
    buf[n] = '\0';
    char *p = strrchr(buf, ')');
    if (!p)
        return -1;
    p += 2; /* field 3 */
    for (int field = 3; field < 22 && p; field++) {
        p = strchr(p, ' ');
        if (p)
            p++;
    }
    return p ? strtoll(p, NULL, 10) : -1;
}

/* SIGKILL every process listed in DIR's cgroup.procs and below; the number found. */
static int kill_under(const char *dir) {
    char path[PATH_MAX];
    int found = 0;
    snprintf(path, sizeof path, "%s/cgroup.procs", dir);
    FILE *f = fopen(path, "re");
    if (f) {
        int pid;
        while (fscanf(f, "%d", &pid) == 1)
            if (pid > 1 && kill(pid, SIGKILL) == 0)
                found++;
        fclose(f);
    }
    DIR *d = opendir(dir);
    if (!d)
        return found;
    struct dirent *e;
    while ((e = readdir(d)))
        if (e->d_type == DT_DIR && e->d_name[0] != '.') {
            snprintf(path, sizeof path, "%s/%s", dir, e->d_name);
            found += kill_under(path);
        }
    closedir(d);
    return found;
}

/* cgroups.py CgroupDriver.kill_all: PID 1's exit took its PID namespace down
 * already; this catches anything that got into the cgroup some other way. */
static void kill_leftovers(char **dirs, int ndirs, const char *kill_file) {
    if (kill_file) {
        int fd = open(kill_file, O_WRONLY | O_CLOEXEC);
        if (fd >= 0) {
            if (write(fd, "1", 1) < 0 && errno != ENOENT)
                warn("%s: %s", kill_file, strerror(errno));
            close(fd);
        }
    }
    for (int round = 0; round < 500; round++) {
        int found = 0;
        for (int i = 0; i < ndirs; i++)
            found += kill_under(dirs[i]);
        if (!found)
            return;
        usleep(10 * 1000);
    }
    warn("processes still listed in the container's cgroups after SIGKILL");
}

/* Until the container's exec: the child's error pipe closes on exec (EOF: it ran,
 * started.json) or carries the text of what failed (exit.json, StartError).
 * Returns whether the container runs. */
static int watch_start(pid_t pid, int error_fd, const char *started, const char *exit_file) {
    char text[4096], body[256], at[32];
    size_t len = 0;
    for (;;) {
        ssize_t n = read(error_fd, text + len, sizeof text - 1 - len);
        if (n < 0 && errno == EINTR)
            continue;
        if (n <= 0 || (len += n) == sizeof text - 1)
            break;
    }
    close(error_fd);
    text[len] = '\0';
    while (len && (text[len - 1] == '\n' || text[len - 1] == ' '))
        text[--len] = '\0';
    if (len) {
        int status = 0;
        while (waitpid(pid, &status, 0) < 0 && errno == EINTR)
            ;
        warn("start failed: %s", text);
        write_start_error(exit_file, status, text);
        return 0;
    }
    /* (A child killed before its exec, e.g. by the OOM killer under a tiny limit,
     * also gives EOF; it is then reported as a run that died of that signal.)
     * No fsync: after a crash of the node the container is gone anyway. */
    rfc3339_now(at, sizeof at);
    int n = snprintf(body, sizeof body, "{\"pid\": %d, \"startedAt\": \"%s\", \"startTime\": %lld}\n",
                     (int)pid, at, proc_start_time(pid));
    write_atomic(started, body, n, 0);
    warn("container started: pid %d", (int)pid);
    return 1;
}

enum { O_PID = 1, O_STDOUT, O_STDERR, O_LOG, O_MAX_SIZE, O_MAX_FILES, O_EXIT, O_OOM_EVENTS, O_OOM_FAILCNT,
       O_CGROUP, O_CGROUP_KILL, O_ERROR_FD, O_STARTED, O_NOTIFY_FD };

int main(int argc, char **argv) {
    static const struct option options[] = {
        {"pid", required_argument, 0, O_PID},
        {"stdout", required_argument, 0, O_STDOUT},
        {"stderr", required_argument, 0, O_STDERR},
        {"log", required_argument, 0, O_LOG},
        {"log-max-size", required_argument, 0, O_MAX_SIZE},
        {"log-max-files", required_argument, 0, O_MAX_FILES},
        {"exit-file", required_argument, 0, O_EXIT},
        {"oom-events", required_argument, 0, O_OOM_EVENTS},
        {"oom-failcnt", required_argument, 0, O_OOM_FAILCNT},
        {"cgroup", required_argument, 0, O_CGROUP},
        {"cgroup-kill", required_argument, 0, O_CGROUP_KILL},
        {"error-fd", required_argument, 0, O_ERROR_FD},
        {"started-file", required_argument, 0, O_STARTED},
        {"notify-fd", required_argument, 0, O_NOTIFY_FD},
        {0, 0, 0, 0},
    };
    pid_t pid = 0;
    const char *exit_file = NULL, *oom_events = NULL, *oom_failcnt = NULL, *cgroup_kill = NULL, *started = NULL;
    int error_fd = -1, notify_fd = -1;
    char **cgroups = calloc(argc, sizeof *cgroups);
    int ncgroups = 0, opt;
    streams[0] = (struct stream){.fd = -1, .name = "stdout"};
    streams[1] = (struct stream){.fd = -1, .name = "stderr"};
    out.max_size = 10 * 1024 * 1024;
    out.max_files = 5;
    while ((opt = getopt_long(argc, argv, "", options, NULL)) != -1) {
        switch (opt) {
        case O_PID: pid = (pid_t)parse_num(optarg, "pid", 1); break;
        case O_STDOUT: streams[0].fd = (int)parse_num(optarg, "stdout", 0); break;
        case O_STDERR: streams[1].fd = (int)parse_num(optarg, "stderr", 0); break;
        case O_LOG: out.path = optarg; break;
        case O_MAX_SIZE: out.max_size = parse_num(optarg, "log-max-size", 1); break;
        case O_MAX_FILES: out.max_files = (int)parse_num(optarg, "log-max-files", 2); break;
        case O_EXIT: exit_file = optarg; break;
        case O_OOM_EVENTS: oom_events = optarg; break;
        case O_OOM_FAILCNT: oom_failcnt = optarg; break;
        case O_CGROUP: cgroups[ncgroups++] = optarg; break;
        case O_CGROUP_KILL: cgroup_kill = optarg; break;
        case O_ERROR_FD: error_fd = (int)parse_num(optarg, "error-fd", 0); break;
        case O_STARTED: started = optarg; break;
        case O_NOTIFY_FD: notify_fd = (int)parse_num(optarg, "notify-fd", 0); break;
        default: return 2;
        }
    }
    if (!pid || streams[0].fd < 0 || streams[1].fd < 0 || !out.path || !exit_file || optind != argc ||
        (error_fd >= 0) != (started != NULL)) {
        fprintf(stderr, "usage: orch-monitor --pid PID --stdout FD --stderr FD --log PATH --exit-file PATH "
                        "[--error-fd FD --started-file PATH] [--notify-fd FD] [--log-max-size N] "
                        "[--log-max-files N] [--oom-events FILE] [--oom-failcnt FILE] [--cgroup DIR]... "
                        "[--cgroup-kill FILE]\n");
        return 2;
    }
    out.reported_at = -REPORT_EVERY_S;

    /* It ends only when its container does. */
    signal(SIGTERM, SIG_IGN);
    signal(SIGINT, SIG_IGN);
    signal(SIGHUP, SIG_IGN);
    signal(SIGPIPE, SIG_IGN);
    for (int i = 0; i < 2; i++)
        fcntl(streams[i].fd, F_SETFL, fcntl(streams[i].fd, F_GETFL) | O_NONBLOCK);
    if (error_fd >= 0 && !watch_start(pid, error_fd, started, exit_file)) {
        kill_leftovers(cgroups, ncgroups, cgroup_kill);
        return 0;
    }
    if (notify_fd >= 0)
        close(notify_fd); /* the Runtime's start() returns */
    /* Without a pidfd (gone already, or a kernel before 5.3) EOF alone ends the pump. */
    int pidfd = (int)syscall(SYS_pidfd_open, pid, 0);
    open_log();
    pump(pidfd);
    stamp();
    for (int i = 0; i < 2; i++)
        if (streams[i].fd >= 0)
            finish(&streams[i]);
    flush_stage();
    if (out.fd >= 0)
        close(out.fd);
    if (out.dropped)
        warn("container log %s: %lld bytes of output were dropped", out.path, out.dropped);
    if (pidfd >= 0)
        close(pidfd);

    int status;
    while (waitpid(pid, &status, 0) < 0) {
        if (errno != EINTR) {
            warn("waitpid %d: %s", (int)pid, strerror(errno));
            status = -1;
            break;
        }
    }
    write_exit(exit_file, status, oom_events, oom_failcnt);
    kill_leftovers(cgroups, ncgroups, cgroup_kill);
    return 0;
}
