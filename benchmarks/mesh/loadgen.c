/*
 * loadgen: the mesh harness's load generator (benchmarks/mesh/loadgen.py compiles it with
 * gcc at run time and reads the one JSON object it prints on stdout).
 *
 *   loadgen http --host H --port P [--path /x] [--header "Name: value"]... --rate R
 *                --connections N --duration S [--drain S] [--linger S]
 *       Open loop: request i is due at t0 + i/R, whatever happened to the ones before it.
 *       A due request goes out on an idle keep-alive connection (HTTP/1.1, no pipelining);
 *       when all N are busy it waits in a queue. Its latency is measured from the time it
 *       was due, not from when it was sent, so a stalled server is charged for every
 *       request it delayed (no coordinated omission). Requests still queued or unanswered
 *       when the drain time after the run is over are errors, and their latency so far is
 *       recorded as well, so they push the tail up instead of vanishing.
 *   loadgen tcp-send --host H --port P --connections N --duration S
 *       Bulk TCP: writes 64 KiB blocks on N connections for S seconds, half-closes, and
 *       waits for the far end to close. Throughput is bytes / (last close - start): bytes
 *       still in socket buffers when the clock stops are not counted as delivered.
 *   loadgen tcp-sink --port P
 *       Accepts, reads and discards, closes on EOF. Runs until killed.
 *
 * Its own cost is in the JSON (getrusage user+sys): at a few µs of CPU per request, one
 * core sustains far more than the rates the harness asks for; `send_lag_us` (time from due
 * to sent) shows when it, or a full connection pool, falls behind.
 *
 * One thread, epoll, non-blocking sockets; timers with epoll_pwait2 (ns resolution) and a
 * timer slack of 1 µs, so it sleeps between requests instead of spinning.
 */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/prctl.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#define MAX_HEADERS 16
#define HEAD_MAX 16384
#define READ_BUF (256 * 1024)
#define SEND_BLOCK (64 * 1024)

static int64_t now_ns(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000000000LL + ts.tv_nsec;
}

static void die(const char *what)
{
    fprintf(stderr, "loadgen: %s: %s\n", what, strerror(errno));
    exit(2);
}

/* ---- options ---------------------------------------------------------------------- */

struct options {
    const char *mode, *host, *path;
    const char *headers[MAX_HEADERS];
    int nheaders, port, connections;
    double rate, duration, drain, linger;
};

static void usage(void)
{
    fprintf(stderr, "usage: loadgen http|tcp-send|tcp-sink --host H --port P [--path P] "
                    "[--header H]... [--rate R] [--connections N] [--duration S] [--drain S] "
                    "[--linger S]\n");
    exit(2);
}

static void parse_options(int argc, char **argv, struct options *o)
{
    memset(o, 0, sizeof *o);
    o->host = "127.0.0.1";
    o->path = "/";
    o->connections = 1;
    o->rate = 100;
    o->duration = 1;
    o->drain = 2;
    if (argc < 2)
        usage();
    o->mode = argv[1];
    for (int i = 2; i < argc; i++) {
        const char *k = argv[i], *v = i + 1 < argc ? argv[i + 1] : NULL;
        if (!v)
            usage();
        i++;
        if (!strcmp(k, "--host")) o->host = v;
        else if (!strcmp(k, "--port")) o->port = atoi(v);
        else if (!strcmp(k, "--path")) o->path = v;
        else if (!strcmp(k, "--rate")) o->rate = atof(v);
        else if (!strcmp(k, "--connections")) o->connections = atoi(v);
        else if (!strcmp(k, "--duration")) o->duration = atof(v);
        else if (!strcmp(k, "--drain")) o->drain = atof(v);
        else if (!strcmp(k, "--linger")) o->linger = atof(v);
        else if (!strcmp(k, "--header") && o->nheaders < MAX_HEADERS) o->headers[o->nheaders++] = v;
        else usage();
    }
    if (o->port <= 0 || o->connections <= 0 || o->rate <= 0 || o->duration <= 0)
        usage();
}

static struct sockaddr_in target_address(const struct options *o)
{
    struct sockaddr_in a = {.sin_family = AF_INET, .sin_port = htons(o->port)};
    if (inet_pton(AF_INET, o->host, &a.sin_addr) != 1) {
        fprintf(stderr, "loadgen: --host must be an IPv4 address: %s\n", o->host);
        exit(2);
    }
    return a;
}

static void print_rusage(void)
{
    struct rusage ru;
    getrusage(RUSAGE_SELF, &ru);
    printf("\"cpu_user_s\": %.6f, \"cpu_system_s\": %.6f",
           ru.ru_utime.tv_sec + ru.ru_utime.tv_usec / 1e6,
           ru.ru_stime.tv_sec + ru.ru_stime.tv_usec / 1e6);
}

/* ---- http: response framing ------------------------------------------------------- */

enum body_state { B_HEAD, B_LENGTH, B_CHUNK_SIZE, B_CHUNK_DATA, B_CHUNK_CRLF, B_TRAILER, B_UNTIL_CLOSE };

enum conn_state { C_CONNECTING, C_IDLE, C_BUSY, C_CLOSED };

struct conn {
    int fd;
    enum conn_state state;
    enum body_state body;
    char head[HEAD_MAX];
    int head_len;
    int64_t remaining;     /* body bytes (B_LENGTH) or chunk bytes (B_CHUNK_DATA) left */
    char line[64];         /* a chunk-size or trailer line being assembled */
    int line_len;
    int status, close_after;
    int64_t due_ns, sent_ns;
    size_t req_off;        /* bytes of the request written so far */
};

struct http_run {
    struct options *o;
    struct sockaddr_in addr;
    int ep;
    struct conn *conns;
    int *idle, nidle;
    char *request;
    size_t request_len;
    int64_t t0, step_ns;
    int64_t total, next_index;          /* requests in the run; the next one to become due */
    int64_t *queue, qhead, qtail;        /* due times of requests waiting for a connection */
    int64_t *lat_ns, nlat;               /* one latency per finished (or abandoned) request */
    int64_t *lag_ns, nlag;               /* due -> sent, per request sent */
    int64_t completed, ok, non_2xx, errors_connect, errors_io, errors_parse, timeouts, unsent;
    int64_t response_bytes, reconnects, in_flight, max_queue;
    int64_t statuses[6];                 /* 1xx..5xx, by hundreds; [0]: none */
};

static void conn_open(struct http_run *r, int i);

static void set_nodelay(int fd)
{
    int one = 1;
    setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
}

static void conn_close(struct http_run *r, int i)
{
    struct conn *c = &r->conns[i];
    if (c->fd >= 0) {
        epoll_ctl(r->ep, EPOLL_CTL_DEL, c->fd, NULL);
        close(c->fd);
    }
    c->fd = -1;
    c->state = C_CLOSED;
}

static void make_idle(struct http_run *r, int i)
{
    r->conns[i].state = C_IDLE;
    r->idle[r->nidle++] = i;
}

/* A request ended (answered or failed): record its latency from the time it was due. */
static void finish_request(struct http_run *r, struct conn *c, int64_t now, int ok_answer)
{
    r->lat_ns[r->nlat++] = now - c->due_ns;
    r->in_flight--;
    if (ok_answer) {
        r->completed++;
        int cls = c->status / 100;
        r->statuses[cls >= 1 && cls <= 5 ? cls : 0]++;
        if (c->status >= 200 && c->status < 300) r->ok++;
        else r->non_2xx++;
    }
}

/* The connection broke (reset, EOF, unparsable response): the request on it is an error. */
static void conn_failed(struct http_run *r, int i, int64_t now, int64_t *counter)
{
    struct conn *c = &r->conns[i];
    if (c->state == C_BUSY) {
        (*counter)++;
        finish_request(r, c, now, 0);
    } else if (c->state == C_CONNECTING) {
        (*counter)++;
    }
    conn_close(r, i);
    r->reconnects++;
    conn_open(r, i);
}

static int parse_head(struct conn *c)
{
    /* Status line and the two framing fields; returns 0, or -1 when it is not HTTP/1.x. */
    char *p = c->head, *end = c->head + c->head_len;
    if (c->head_len < 12 || memcmp(p, "HTTP/1.", 7) != 0)
        return -1;
    c->status = atoi(p + 9);
    if (c->status < 100 || c->status > 599)
        return -1;
    int chunked = 0, have_length = 0;
    int64_t length = 0;
    c->close_after = p[7] == '0';
    char *line = memchr(p, '\n', end - p);
    while (line && line + 1 < end) {
        line++;
        char *eol = memchr(line, '\n', end - line);
        if (!eol)
            break;
        if (!strncasecmp(line, "content-length:", 15)) {
            length = strtoll(line + 15, NULL, 10);
            have_length = 1;
        } else if (!strncasecmp(line, "transfer-encoding:", 18)) {
            chunked = memmem(line, eol - line, "chunked", 7) != NULL;
        } else if (!strncasecmp(line, "connection:", 11)) {
            if (memmem(line, eol - line, "close", 5)) c->close_after = 1;
            if (memmem(line, eol - line, "keep-alive", 10)) c->close_after = 0;
        }
        line = eol;
    }
    int bodiless = c->status < 200 || c->status == 204 || c->status == 304;
    if (bodiless) { c->body = B_LENGTH; c->remaining = 0; }
    else if (chunked) { c->body = B_CHUNK_SIZE; c->line_len = 0; }
    else if (have_length) { c->body = B_LENGTH; c->remaining = length; }
    else { c->body = B_UNTIL_CLOSE; c->close_after = 1; }
    return 0;
}

/* Feeds response bytes; returns 1 when the response is complete, 0 for more, -1 on error.
 * *used says how many bytes of buf belong to this response. */
static int feed(struct conn *c, const char *buf, size_t len, size_t *used)
{
    size_t i = 0;
    while (i < len) {
        switch (c->body) {
        case B_HEAD: {
            size_t room = HEAD_MAX - c->head_len, n = len - i < room ? len - i : room;
            if (n == 0)
                return -1;
            memcpy(c->head + c->head_len, buf + i, n);
            int old = c->head_len;
            c->head_len += n;
            char *end = memmem(c->head + (old > 3 ? old - 3 : 0), c->head_len - (old > 3 ? old - 3 : 0),
                               "\r\n\r\n", 4);
            if (!end) { i += n; break; }
            size_t head_bytes = end + 4 - c->head;
            i += head_bytes - old;
            c->head_len = head_bytes;
            if (parse_head(c) < 0)
                return -1;
            if (c->body == B_LENGTH && c->remaining == 0) { *used = i; return 1; }
            break;
        }
        case B_LENGTH: {
            size_t n = (int64_t)(len - i) < c->remaining ? len - i : (size_t)c->remaining;
            c->remaining -= n;
            i += n;
            if (c->remaining == 0) { *used = i; return 1; }
            break;
        }
        case B_UNTIL_CLOSE:
            i = len;
            break;
        case B_CHUNK_SIZE:
        case B_CHUNK_CRLF:
        case B_TRAILER: {
            char ch = buf[i++];
            if (c->line_len >= (int)sizeof c->line - 1)
                return -1;
            c->line[c->line_len++] = ch;
            if (ch != '\n')
                break;
            c->line[c->line_len] = 0;
            int blank = c->line_len <= 2;
            c->line_len = 0;
            if (c->body == B_CHUNK_CRLF) {
                if (!blank) return -1;
                c->body = B_CHUNK_SIZE;
            } else if (c->body == B_CHUNK_SIZE) {
                char *e;
                long long size = strtoll(c->line, &e, 16);
                if (e == c->line || size < 0) return -1;
                if (size == 0) c->body = B_TRAILER;
                else { c->remaining = size; c->body = B_CHUNK_DATA; }
            } else if (blank) { /* end of trailers */
                *used = i;
                return 1;
            }
            break;
        }
        case B_CHUNK_DATA: {
            size_t n = (int64_t)(len - i) < c->remaining ? len - i : (size_t)c->remaining;
            c->remaining -= n;
            i += n;
            if (c->remaining == 0) c->body = B_CHUNK_CRLF;
            break;
        }
        }
    }
    *used = i;
    return 0;
}

static void conn_open(struct http_run *r, int i)
{
    struct conn *c = &r->conns[i];
    c->fd = socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    if (c->fd < 0)
        die("socket");
    set_nodelay(c->fd);
    c->state = C_CONNECTING;
    struct epoll_event ev = {.events = EPOLLOUT, .data.u32 = i};
    if (connect(c->fd, (struct sockaddr *)&r->addr, sizeof r->addr) < 0 && errno != EINPROGRESS) {
        r->errors_connect++;
        close(c->fd);
        c->fd = -1;
        c->state = C_CLOSED;
        return;
    }
    epoll_ctl(r->ep, EPOLL_CTL_ADD, c->fd, &ev);
}

static void send_request(struct http_run *r, int i, int64_t due, int64_t now)
{
    struct conn *c = &r->conns[i];
    c->state = C_BUSY;
    c->due_ns = due;
    c->sent_ns = now;
    c->body = B_HEAD;
    c->head_len = 0;
    c->req_off = 0;
    r->in_flight++;
    r->lag_ns[r->nlag++] = now - due;
    ssize_t n = write(c->fd, r->request, r->request_len);
    if (n < 0 && errno != EAGAIN) {
        conn_failed(r, i, now, &r->errors_io);
        return;
    }
    c->req_off = n > 0 ? (size_t)n : 0;
    struct epoll_event ev = {.events = EPOLLIN | (c->req_off < r->request_len ? EPOLLOUT : 0), .data.u32 = i};
    epoll_ctl(r->ep, EPOLL_CTL_MOD, c->fd, &ev);
}

static void on_event(struct http_run *r, int i, uint32_t events, char *buf)
{
    struct conn *c = &r->conns[i];
    int64_t now = now_ns();
    if (c->state == C_CONNECTING) {
        int err = 0;
        socklen_t len = sizeof err;
        getsockopt(c->fd, SOL_SOCKET, SO_ERROR, &err, &len);
        if (err) {
            r->errors_connect++;
            conn_close(r, i);
            /* Do not hammer a refusing server: the next due request retries the connect. */
            return;
        }
        struct epoll_event ev = {.events = EPOLLIN, .data.u32 = i};
        epoll_ctl(r->ep, EPOLL_CTL_MOD, c->fd, &ev);
        make_idle(r, i);
        return;
    }
    if (c->state == C_BUSY && (events & EPOLLOUT) && c->req_off < r->request_len) {
        ssize_t n = write(c->fd, r->request + c->req_off, r->request_len - c->req_off);
        if (n < 0 && errno != EAGAIN) { conn_failed(r, i, now, &r->errors_io); return; }
        if (n > 0) c->req_off += n;
        if (c->req_off == r->request_len) {
            struct epoll_event ev = {.events = EPOLLIN, .data.u32 = i};
            epoll_ctl(r->ep, EPOLL_CTL_MOD, c->fd, &ev);
        }
    }
    if (!(events & (EPOLLIN | EPOLLHUP | EPOLLERR)))
        return;
    for (;;) {
        ssize_t n = read(c->fd, buf, READ_BUF);
        if (n < 0 && errno == EAGAIN)
            return;
        if (n <= 0) {
            if (c->state == C_BUSY && c->body == B_UNTIL_CLOSE && n == 0) {
                finish_request(r, c, now, 1);
                c->state = C_IDLE;
            }
            conn_failed(r, i, now, &r->errors_io);
            return;
        }
        if (c->state != C_BUSY) {      /* bytes nobody asked for */
            conn_failed(r, i, now, &r->errors_parse);
            return;
        }
        r->response_bytes += n;
        size_t used = 0;
        int done = feed(c, buf, n, &used);
        if (done < 0 || (done == 1 && used < (size_t)n)) {
            conn_failed(r, i, now, &r->errors_parse);
            return;
        }
        if (done == 1) {
            finish_request(r, c, now, 1);
            if (c->close_after) {
                conn_close(r, i);
                r->reconnects++;
                conn_open(r, i);
            } else {
                make_idle(r, i);
            }
            return;
        }
    }
}

static int cmp_i64(const void *a, const void *b)
{
    int64_t x = *(const int64_t *)a, y = *(const int64_t *)b;
    return (x > y) - (x < y);
}

static double percentile_us(int64_t *sorted, int64_t n, double q)
{
    if (n == 0)
        return -1;
    int64_t idx = (int64_t)(q * n + 0.999999) - 1;   /* nearest rank */
    if (idx < 0) idx = 0;
    if (idx >= n) idx = n - 1;
    return sorted[idx] / 1000.0;
}

static void print_distribution(const char *name, int64_t *v, int64_t n)
{
    qsort(v, n, sizeof *v, cmp_i64);
    double sum = 0;
    for (int64_t i = 0; i < n; i++) sum += v[i];
    printf("\"%s\": {\"count\": %lld, \"mean\": %.1f, \"p50\": %.1f, \"p90\": %.1f, \"p99\": %.1f, "
           "\"p99.9\": %.1f, \"max\": %.1f}",
           name, (long long)n, n ? sum / n / 1000.0 : -1, percentile_us(v, n, 0.50),
           percentile_us(v, n, 0.90), percentile_us(v, n, 0.99), percentile_us(v, n, 0.999),
           n ? v[n - 1] / 1000.0 : -1);
}

static char *build_request(const struct options *o, size_t *len)
{
    size_t cap = 512 + strlen(o->path) + strlen(o->host);
    for (int i = 0; i < o->nheaders; i++) cap += strlen(o->headers[i]) + 2;
    char *req = malloc(cap);
    int n = snprintf(req, cap, "GET %s HTTP/1.1\r\nHost: %s:%d\r\n", o->path, o->host, o->port);
    for (int i = 0; i < o->nheaders; i++)
        n += snprintf(req + n, cap - n, "%s\r\n", o->headers[i]);
    n += snprintf(req + n, cap - n, "\r\n");
    *len = n;
    return req;
}

static int run_http(struct options *o)
{
    struct http_run r = {.o = o, .addr = target_address(o)};
    r.request = build_request(o, &r.request_len);
    r.total = (int64_t)(o->rate * o->duration + 0.5);
    r.step_ns = (int64_t)(1e9 / o->rate);
    r.queue = calloc(r.total + 1, sizeof *r.queue);
    r.lat_ns = calloc(r.total + 1, sizeof *r.lat_ns);
    r.lag_ns = calloc(r.total + 1, sizeof *r.lag_ns);
    r.conns = calloc(o->connections, sizeof *r.conns);
    r.idle = calloc(o->connections, sizeof *r.idle);
    char *buf = malloc(READ_BUF);
    struct epoll_event *events = calloc(o->connections, sizeof *events);
    if (!r.queue || !r.lat_ns || !r.lag_ns || !r.conns || !r.idle || !buf || !events)
        die("malloc");
    r.ep = epoll_create1(EPOLL_CLOEXEC);
    if (r.ep < 0)
        die("epoll_create1");

    /* Connect all connections before the clock starts (up to 5 s). */
    for (int i = 0; i < o->connections; i++)
        conn_open(&r, i);
    int64_t connect_deadline = now_ns() + 5000000000LL;
    while (r.nidle < o->connections && now_ns() < connect_deadline) {
        int n = epoll_wait(r.ep, events, o->connections, 100);
        for (int k = 0; k < n; k++)
            on_event(&r, events[k].data.u32, events[k].events, buf);
        for (int i = 0; i < o->connections; i++)
            if (r.conns[i].state == C_CLOSED) conn_open(&r, i);
    }
    int connected = r.nidle;

    r.t0 = now_ns();
    int64_t end_ns = r.t0 + (int64_t)(o->duration * 1e9);
    int64_t drain_deadline = end_ns + (int64_t)(o->drain * 1e9);
    for (;;) {
        int64_t now = now_ns();
        /* Requests that have become due join the queue. */
        while (r.next_index < r.total && r.t0 + r.next_index * r.step_ns <= now)
            r.queue[r.qtail++] = r.t0 + r.next_index++ * r.step_ns;
        if (r.qtail - r.qhead > r.max_queue)
            r.max_queue = r.qtail - r.qhead;
        /* Closed connections (the server closed, or a connect failed) are reopened on demand. */
        if (r.qhead < r.qtail && r.nidle == 0)
            for (int i = 0; i < o->connections; i++)
                if (r.conns[i].state == C_CLOSED) conn_open(&r, i);
        while (r.qhead < r.qtail && r.nidle > 0) {
            int i = r.idle[--r.nidle];
            send_request(&r, i, r.queue[r.qhead++], now);
        }
        if (r.next_index >= r.total && r.qhead == r.qtail && r.in_flight == 0)
            break;
        if (now >= drain_deadline)
            break;
        int64_t wake = drain_deadline;
        if (r.next_index < r.total && r.nidle > 0)
            wake = r.t0 + r.next_index * r.step_ns;
        int64_t wait = wake - now;
        if (wait < 0) wait = 0;
        if (wait > 100000000) wait = 100000000;
        struct timespec ts = {.tv_sec = wait / 1000000000, .tv_nsec = wait % 1000000000};
        int n = epoll_pwait2(r.ep, events, o->connections, &ts, NULL);
        if (n < 0 && errno != EINTR)
            die("epoll_pwait2");
        for (int k = 0; k < n; k++)
            on_event(&r, events[k].data.u32, events[k].events, buf);
    }
    int64_t finished = now_ns();
    /* What the drain did not see answered counts against the target, with the time waited. */
    for (int i = 0; i < o->connections; i++)
        if (r.conns[i].state == C_BUSY) {
            r.timeouts++;
            finish_request(&r, &r.conns[i], finished, 0);
        }
    for (int64_t q = r.qhead; q < r.qtail; q++) {
        r.lat_ns[r.nlat++] = finished - r.queue[q];
        r.unsent++;
    }
    r.unsent += r.total - r.next_index;
    if (o->linger > 0)
        usleep((useconds_t)(o->linger * 1e6));

    double elapsed = (finished - r.t0) / 1e9;
    printf("{\"mode\": \"http\", \"target_rate\": %.1f, \"connections\": %d, \"connected\": %d, "
           "\"duration_s\": %.3f, \"elapsed_s\": %.3f, \"scheduled\": %lld, \"sent\": %lld, "
           "\"completed\": %lld, \"ok\": %lld, \"non_2xx\": %lld, \"achieved_rps\": %.1f, "
           "\"errors\": {\"connect\": %lld, \"io\": %lld, \"parse\": %lld, \"timeout\": %lld, "
           "\"unsent\": %lld}, \"statuses\": {\"none\": %lld, \"1xx\": %lld, \"2xx\": %lld, "
           "\"3xx\": %lld, \"4xx\": %lld, \"5xx\": %lld}, \"response_bytes\": %lld, "
           "\"reconnects\": %lld, \"max_queue\": %lld, ",
           o->rate, o->connections, connected, o->duration, elapsed, (long long)r.total,
           (long long)r.nlag, (long long)r.completed, (long long)r.ok, (long long)r.non_2xx,
           r.completed / (o->duration > elapsed ? o->duration : elapsed),
           (long long)r.errors_connect,
           (long long)r.errors_io, (long long)r.errors_parse, (long long)r.timeouts,
           (long long)r.unsent, (long long)r.statuses[0], (long long)r.statuses[1],
           (long long)r.statuses[2], (long long)r.statuses[3], (long long)r.statuses[4],
           (long long)r.statuses[5], (long long)r.response_bytes, (long long)r.reconnects,
           (long long)r.max_queue);
    print_distribution("latency_us", r.lat_ns, r.nlat);
    printf(", ");
    print_distribution("send_lag_us", r.lag_ns, r.nlag);
    printf(", ");
    print_rusage();
    printf("}\n");
    return 0;
}

/* ---- tcp-send / tcp-sink ---------------------------------------------------------- */

static int run_tcp_send(struct options *o)
{
    struct sockaddr_in addr = target_address(o);
    int n = o->connections;
    int *fds = calloc(n, sizeof *fds), *open_fds = calloc(n, sizeof *open_fds);
    char *block = malloc(SEND_BLOCK), *sink = malloc(SEND_BLOCK);
    struct epoll_event *events = calloc(n, sizeof *events);
    int ep = epoll_create1(EPOLL_CLOEXEC);
    long long errors = 0;
    for (int i = 0; i < SEND_BLOCK; i++) block[i] = (char)(i * 131 + 7);  /* not HTTP */
    int64_t start = now_ns();
    for (int i = 0; i < n; i++) {
        fds[i] = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
        if (connect(fds[i], (struct sockaddr *)&addr, sizeof addr) < 0) {
            fprintf(stderr, "loadgen: connect %s:%d: %s\n", o->host, o->port, strerror(errno));
            errors++;
            close(fds[i]);
            fds[i] = -1;
            continue;
        }
        fcntl(fds[i], F_SETFL, O_NONBLOCK);
        struct epoll_event ev = {.events = EPOLLOUT | EPOLLIN, .data.u32 = i};
        epoll_ctl(ep, EPOLL_CTL_ADD, fds[i], &ev);
        open_fds[i] = 1;
    }
    int64_t end = start + (int64_t)(o->duration * 1e9);
    int64_t deadline = end + 10000000000LL;
    long long bytes = 0;
    int writing = 1, remaining = 0;
    for (int i = 0; i < n; i++) remaining += open_fds[i];
    while (remaining > 0) {
        int64_t now = now_ns();
        if (writing && now >= end) {
            writing = 0;
            for (int i = 0; i < n; i++)
                if (open_fds[i]) {
                    shutdown(fds[i], SHUT_WR);
                    struct epoll_event ev = {.events = EPOLLIN, .data.u32 = i};
                    epoll_ctl(ep, EPOLL_CTL_MOD, fds[i], &ev);
                }
        }
        if (now >= deadline) {
            fprintf(stderr, "loadgen: far end did not close within 10 s of the half-close\n");
            errors += remaining;
            break;
        }
        int timeout = writing ? (int)((end - now) / 1000000) + 1 : 100;
        int k = epoll_wait(ep, events, n, timeout);
        for (int e = 0; e < k; e++) {
            int i = events[e].data.u32;
            if (!open_fds[i]) continue;
            if (writing && (events[e].events & EPOLLOUT)) {
                ssize_t w = write(fds[i], block, SEND_BLOCK);
                if (w > 0) bytes += w;
                else if (w < 0 && errno != EAGAIN) {
                    errors++;
                    open_fds[i] = 0;
                    remaining--;
                    close(fds[i]);
                    continue;
                }
            }
            if (events[e].events & (EPOLLIN | EPOLLHUP | EPOLLERR)) {
                ssize_t rd = read(fds[i], sink, SEND_BLOCK);
                if (rd == 0 || (rd < 0 && errno != EAGAIN)) {
                    if (rd < 0 || writing) errors++;   /* closed before we were done */
                    open_fds[i] = 0;
                    remaining--;
                    close(fds[i]);
                }
            }
        }
    }
    double elapsed = (now_ns() - start) / 1e9;
    printf("{\"mode\": \"tcp-send\", \"connections\": %d, \"duration_s\": %.3f, "
           "\"elapsed_s\": %.3f, \"bytes\": %lld, \"mb_per_s\": %.2f, \"errors\": %lld, ",
           n, o->duration, elapsed, bytes, bytes / elapsed / 1e6, errors);
    print_rusage();
    printf("}\n");
    return errors ? 1 : 0;
}

static int run_tcp_sink(struct options *o)
{
    struct sockaddr_in addr = {.sin_family = AF_INET, .sin_port = htons(o->port),
                               .sin_addr.s_addr = htonl(INADDR_ANY)};
    int ls = socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0), one = 1;
    setsockopt(ls, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
    if (bind(ls, (struct sockaddr *)&addr, sizeof addr) < 0 || listen(ls, 1024) < 0)
        die("bind/listen");
    int ep = epoll_create1(EPOLL_CLOEXEC);
    struct epoll_event ev = {.events = EPOLLIN, .data.fd = ls}, events[64];
    epoll_ctl(ep, EPOLL_CTL_ADD, ls, &ev);
    char *buf = malloc(READ_BUF);
    fprintf(stderr, "loadgen: sink listening on port %d\n", o->port);
    for (;;) {
        int k = epoll_wait(ep, events, 64, -1);
        for (int e = 0; e < k; e++) {
            int fd = events[e].data.fd;
            if (fd == ls) {
                int c;
                while ((c = accept4(ls, NULL, NULL, SOCK_NONBLOCK | SOCK_CLOEXEC)) >= 0) {
                    struct epoll_event cev = {.events = EPOLLIN, .data.fd = c};
                    epoll_ctl(ep, EPOLL_CTL_ADD, c, &cev);
                }
                continue;
            }
            for (;;) {
                ssize_t n = read(fd, buf, READ_BUF);
                if (n > 0) continue;
                if (n < 0 && errno == EAGAIN) break;
                epoll_ctl(ep, EPOLL_CTL_DEL, fd, NULL);
                close(fd);
                break;
            }
        }
    }
    return 0;
}

int main(int argc, char **argv)
{
    struct options o;
    signal(SIGPIPE, SIG_IGN);
    prctl(PR_SET_TIMERSLACK, 1UL);
    if (argc >= 2 && !strcmp(argv[1], "tcp-sink")) {
        parse_options(argc, argv, &o);
        return run_tcp_sink(&o);
    }
    parse_options(argc, argv, &o);
    if (!strcmp(o.mode, "http")) return run_http(&o);
    if (!strcmp(o.mode, "tcp-send")) return run_tcp_send(&o);
    usage();
    return 2;
}
