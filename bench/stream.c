/* stream.c - `nawal-bench stream`: blob streaming throughput and memory over
 * loopback, through the real transport (proto/transport.c) and blob streamer
 * (proto/blobstream.c).
 *
 * Generates a random file of --size bytes (its CID computed while writing),
 * then forks: the child runs the WebSocket server, the parent the client, so
 * each end's peak RSS is its own process's (VmHWM). The receiving end asks
 * for the blob (BlobRequest at offset 0), the sending end streams 1 MiB
 * BlobChunks from disk with an 8-chunk window, the receiver writes <file>.part,
 * verifies the BLAKE2b-256 CID and renames. --direction up: the client sends
 * (an agent uploading a delta); down: the server sends (an agent downloading
 * the base model). Prints the transfer rate (request to last chunk received),
 * the complete rate (to CID verified, file synced and renamed) and, per end,
 * peak RSS and its growth over the RSS before the transfer started.
 * --raw measures the transport alone: 1 MiB messages from memory, no files,
 * no protobuf, no CID. TLS (default) uses a throw-away self-signed certificate made with the
 * openssl command in the bench's temporary directory. */
#include "timing.h"
#include "stream.h"

#include "blobstream.h"
#include "cid.h"
#include "cli.h"
#include "transport.h"

#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

/* "1GiB", "512MiB", "100M", "4096" -> bytes; 0 on a bad string */
static uint64_t parse_size(const char *s) {
    char *end;
    errno = 0;
    double v = strtod(s, &end);
    if (errno || end == s || v < 0) return 0;
    struct { const char *suf; double mul; } units[] = {
        { "", 1 }, { "B", 1 }, { "K", 1e3 }, { "KB", 1e3 }, { "KiB", 1024.0 }, { "M", 1e6 }, { "MB", 1e6 },
        { "MiB", 1048576.0 }, { "G", 1e9 }, { "GB", 1e9 }, { "GiB", 1073741824.0 }, { "T", 1e12 },
        { "TiB", 1099511627776.0 },
    };
    for (size_t i = 0; i < sizeof units / sizeof units[0]; i++)
        if (!strcmp(end, units[i].suf)) return (uint64_t)(v * units[i].mul);
    return 0;
}

static long status_kib(const char *field) {
    FILE *f = fopen("/proc/self/status", "r");
    char line[256];
    long v = -1;
    size_t n = strlen(field);
    while (f && fgets(line, sizeof line, f))
        if (!strncmp(line, field, n) && line[n] == ':') v = atol(line + n + 1);
    if (f) fclose(f);
    return v;
}

/* random file (xorshift, cheap) with its CID */
static int make_blob(const char *path, uint64_t size, uint8_t cid[NAWAL_CID_BYTES]) {
    int fd = open(path, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0600);
    if (fd < 0) return -1;
    size_t bufsz = 1u << 20;
    uint64_t *buf = malloc(bufsz), s = 0x9E3779B97F4A7C15ull;
    nawal_cid_state st;
    nawal_cid_init(&st);
    int rc = 0;
    for (uint64_t done = 0; done < size && !rc;) {
        size_t n = size - done < bufsz ? (size_t)(size - done) : bufsz;
        for (size_t i = 0; i < bufsz / 8; i++) {
            s ^= s << 13;
            s ^= s >> 7;
            s ^= s << 17;
            buf[i] = s;
        }
        nawal_cid_update(&st, buf, n);
        if (write(fd, buf, n) != (ssize_t)n) rc = -1;
        done += n;
    }
    nawal_cid_final(&st, cid);
    free(buf);
    if (close(fd)) rc = -1;
    return rc;
}

/* ---- one end of the transfer ---- */

typedef struct {
    int receiver;                 /* 1: asks and receives; 0: serves the file */
    const char *src, *dst;
    uint8_t cid[NAWAL_CID_BYTES];
    nawal_blob_receiver *rx;
    nawal_blob_sender *tx;
    nawal_blob_sink sink;
    int ended, ok, connections;
    double t_request, t_last_chunk, t_complete;
    char err[256];
    /* --raw: 1 MiB messages from memory, no files, no hashing */
    int raw;
    uint64_t raw_size, raw_done;
    uint8_t *raw_buf;
    size_t window;
    uint64_t http_off, http_total; /* --http */
} end_state;

static end_state end_init(int receiver, int raw, uint64_t size, int window, const char *src, const char *dst,
                          const uint8_t cid[NAWAL_CID_BYTES]) {
    end_state e = { 0 };
    e.receiver = receiver;
    e.raw = raw;
    e.raw_size = size;
    e.window = (size_t)window;
    e.src = src;
    e.dst = dst;
    memcpy(e.cid, cid, NAWAL_CID_BYTES);
    return e;
}

/* what the child reports to the parent */
typedef struct {
    long peak_kib, base_kib;
    int ok;
    double t_transfer, t_complete;
    char err[256];
} end_report;

static void fail(end_state *e, nawal_ws_conn *c, const char *msg) {
    if (!e->err[0]) snprintf(e->err, sizeof e->err, "%s", msg);
    nawal_ws_close(c, "error");
}

static void h_open(nawal_ws_conn *c, void *user) {
    end_state *e = user;
    e->connections++;
    if (!e->receiver) return;
    uint8_t req[NAWAL_BLOB_REQUEST_MAX];
    size_t n = 1;
    req[0] = 0;
    if (!e->raw) nawal_blob_receiver_request(e->rx, req, sizeof req, &n);
    e->t_request = bench_now_s();
    if (nawal_ws_send(c, req, n)) fail(e, c, "cannot send the request");
}

static void pump(nawal_ws_conn *c, end_state *e) {
    char err[256];
    if (e->raw) {
        while (e->raw_buf && e->raw_done < e->raw_size && nawal_ws_queued(c) < e->window) {
            size_t n = e->raw_size - e->raw_done < NAWAL_BLOB_CHUNK_BYTES ? (size_t)(e->raw_size - e->raw_done)
                                                                          : NAWAL_BLOB_CHUNK_BYTES;
            if (nawal_ws_send(c, e->raw_buf, n)) {
                if (errno != EAGAIN) fail(e, c, "send failed");
                return;
            }
            e->raw_done += n;
        }
        return;
    }
    if (e->tx && nawal_blob_sender_pump(e->tx, &e->sink, err, sizeof err) < 0) fail(e, c, err);
}

static void h_message(nawal_ws_conn *c, const uint8_t *msg, size_t len, void *user) {
    end_state *e = user;
    if (e->raw) {
        if (e->receiver) {
            e->raw_done += len;
            if (e->raw_done >= e->raw_size) {
                e->t_last_chunk = e->t_complete = bench_now_s();
                e->ok = 1;
                nawal_ws_close(c, "done");
            }
        } else if (!e->raw_buf) {
            e->raw_buf = calloc(1, NAWAL_BLOB_CHUNK_BYTES);
            pump(c, e);
        }
        return;
    }
    if (e->receiver) {
        double t = bench_now_s();
        int rc = nawal_blob_receiver_chunk(e->rx, msg, len, e->err, sizeof e->err);
        if (rc < 0) {
            nawal_ws_close(c, "bad chunk");
        } else if (rc == 1) {
            e->t_last_chunk = t;
            e->t_complete = bench_now_s();
            e->ok = 1;
            nawal_ws_close(c, "done");
        }
        return;
    }
    uint8_t cid[NAWAL_CID_BYTES];
    uint64_t off;
    char err[256];
    if (e->tx || nawal_blob_request_decode(msg, len, cid, &off, err, sizeof err) || !nawal_cid_equal(cid, e->cid) ||
        nawal_blob_sender_open(&e->tx, e->src, cid, off, e->window, err, sizeof err)) {
        fail(e, c, "bad blob request");
        return;
    }
    nawal_blob_sink_ws(&e->sink, c);
    pump(c, e);
}

static void h_drain(nawal_ws_conn *c, void *user) { pump(c, user); }

static void h_close(nawal_ws_conn *c, const char *reason, void *user) {
    (void)c;
    end_state *e = user;
    e->ended = 1;
    if (!e->receiver && e->raw) e->ok = e->raw_done == e->raw_size;
    else if (!e->receiver) e->ok = e->tx && nawal_blob_sender_offset(e->tx) == nawal_blob_sender_size(e->tx);
    if (!e->ok && !e->err[0]) snprintf(e->err, sizeof e->err, "%s", reason);
}

static volatile sig_atomic_t g_http_done;
static void on_usr1(int sig) {
    (void)sig;
    g_http_done = 1;
}

/* --http: the server's GET /blob (whole, or from "bytes=N-"), the client's fetch into the receiver */
static int http_blob(const nawal_ws_http_request *rq, nawal_ws_http_reply *r, void *user) {
    end_state *e = user;
    struct stat sb;
    uint64_t off = 0;
    if (strcmp(rq->path, "/blob") || (rq->range[0] && sscanf(rq->range, "bytes=%" SCNu64 "-", &off) != 1) ||
        stat(e->src, &sb) || off >= (uint64_t)sb.st_size) {
        r->status = 404;
        return 0;
    }
    if ((r->file_fd = open(e->src, O_RDONLY | O_CLOEXEC)) < 0) return -1;
    r->status = off ? 206 : 200;
    r->content_type = "application/octet-stream";
    r->file_off = off;
    r->file_len = (uint64_t)sb.st_size - off;
    r->file_total = (uint64_t)sb.st_size;
    e->t_request = bench_now_s();
    return 0;
}

static int f_head(nawal_ws_fetch *f, int status, uint64_t off, uint64_t total, void *user) {
    (void)f;
    (void)status;
    end_state *e = user;
    e->http_off = off;
    e->http_total = total;
    return 0;
}

static int f_data(nawal_ws_fetch *f, const uint8_t *d, size_t n, void *user) {
    (void)f;
    end_state *e = user;
    double t = bench_now_s();
    int rc = nawal_blob_receiver_write(e->rx, e->http_off, d, n, e->http_total, e->err, sizeof e->err);
    e->http_off += n;
    if (rc == 1) {
        e->t_last_chunk = t;
        e->t_complete = bench_now_s();
        e->ok = 1;
    }
    return rc < 0 ? -1 : 0;
}

static void f_done(nawal_ws_fetch *f, int ok, const char *reason, void *user) {
    (void)f;
    end_state *e = user;
    e->ended = 1;
    if ((!ok || !e->ok) && !e->err[0]) snprintf(e->err, sizeof e->err, "%s", reason);
    if (!ok) e->ok = 0;
}

static int end_prepare(end_state *e, char *err, size_t errlen) {
    if (!e->receiver || e->raw) return 0;
    return nawal_blob_receiver_open(&e->rx, e->dst, e->cid, 0, err, errlen);
}

static void end_finish(end_state *e) {
    nawal_blob_receiver_free(e->rx);
    nawal_blob_sender_free(e->tx);
    free(e->raw_buf);
}

static void print_end(const char *who, int receiver, long peak, long base) {
    printf("%-6s (%s): peak RSS %.1f MiB, +%.1f MiB over its %.1f MiB before the transfer\n", who,
           receiver ? "receiver" : "sender", peak / 1024.0, (peak - base) / 1024.0, base / 1024.0);
}

int bench_stream(int argc, char **argv) {
    const char *size_s = "1GiB", *direction = "up", *dir = getenv("TMPDIR");
    int tls = 0, plain = 0, keep = 0, raw = 0, http = 0, io_kib = 256, window = NAWAL_BLOB_WINDOW;
    if (!dir || !*dir) dir = "/tmp";
    nawal_flag flags[] = {
        { "size", NAWAL_FLAG_STR, &size_s, "blob size: 1GiB, 512MiB, 100M, bytes", 0, -1, 0, 0 },
        { "tls", NAWAL_FLAG_BOOL, &tls, "TLS WebSocket (the default)", 0, -1, 0, 0 },
        { "plain", NAWAL_FLAG_BOOL, &plain, "plaintext WebSocket (loopback only)", 0, -1, 0, 0 },
        { "direction", NAWAL_FLAG_STR, &direction, "up: client sends to server; down: server sends to client", 0, -1, 0, 0 },
        { "dir", NAWAL_FLAG_STR, &dir, "directory for the blob and its copy ($TMPDIR or /tmp)", 0, -1, 0, 0 },
        { "io-chunk", NAWAL_FLAG_INT, &io_kib, "transport read/fragment size, KiB", 4, 16384, 0, 0 },
        { "window", NAWAL_FLAG_INT, &window, "chunks queued at most by the sender", 1, 1024, 0, 0 },
        { "keep", NAWAL_FLAG_BOOL, &keep, "keep the files", 0, -1, 0, 0 },
        { "raw", NAWAL_FLAG_BOOL, &raw, "transport only: 1 MiB messages from memory, no files, no CID", 0, -1, 0, 0 },
        { "http", NAWAL_FLAG_BOOL, &http, "down only: the blob as an HTTP GET body (as agents download models) instead of BlobChunk messages", 0, -1, 0, 0 },
    };
    int pr = nawal_flags_parse(argc, argv, flags, sizeof flags / sizeof flags[0],
                               "usage: nawal-bench stream [--size 1GiB] [--tls|--plain] [--direction up|down]");
    if (pr) return pr == 1 ? 0 : 2;
    if (tls && plain) {
        fprintf(stderr, "error: --tls and --plain exclude each other\n");
        return 2;
    }
    int up = !strcmp(direction, "up");
    if (!up && strcmp(direction, "down")) {
        fprintf(stderr, "error: --direction must be up or down\n");
        return 2;
    }
    if (http && (up || raw)) {
        fprintf(stderr, "error: --http goes with --direction down, without --raw\n");
        return 2;
    }
    uint64_t size = parse_size(size_s);
    if (!size && strcmp(size_s, "0")) {
        fprintf(stderr, "error: --size: cannot read '%s'\n", size_s);
        return 2;
    }

    char tmp[512], src[600], dst[600], cert[600], key[600];
    snprintf(tmp, sizeof tmp, "%s/nawal-stream-XXXXXX", dir);
    if (!mkdtemp(tmp)) {
        fprintf(stderr, "error: %s: %s\n", tmp, strerror(errno));
        return 1;
    }
    snprintf(src, sizeof src, "%s/blob", tmp);
    snprintf(dst, sizeof dst, "%s/blob.copy", tmp);
    snprintf(cert, sizeof cert, "%s/cert.pem", tmp);
    snprintf(key, sizeof key, "%s/key.pem", tmp);
    if (nawal_crypto_init()) return 1;
    uint8_t cid[NAWAL_CID_BYTES] = { 0 };
    double t0 = bench_now_s();
    if (raw) printf("transport only (--raw): %" PRIu64 " bytes as 1 MiB messages from memory, no files, no CID\n", size);
    else if (make_blob(src, size, cid)) {
        fprintf(stderr, "error: writing %s: %s\n", src, strerror(errno));
        return 1;
    }
    char hex[NAWAL_CID_HEX_BYTES];
    nawal_cid_to_hex(hex, cid);
    if (!raw)
        printf("blob: %" PRIu64 " bytes (%.2f GiB), cid %s, generated in %.1f s\n", size,
               (double)size / 1073741824.0, hex, bench_now_s() - t0);
    if (!plain) {
        char cmd[2048];
        snprintf(cmd, sizeof cmd,
                 "openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes -days 1 "
                 "-subj /CN=nawal-bench -addext subjectAltName=IP:127.0.0.1 -keyout '%s' -out '%s' >/dev/null 2>&1",
                 key, cert);
        if (system(cmd) != 0) {
            fprintf(stderr, "error: the openssl command could not make a test certificate\n");
            return 1;
        }
    }
    if (http)
        printf("transport: %s HTTP GET on 127.0.0.1, down (server sends), %d KiB blocks\n", plain ? "plaintext" : "TLS",
               io_kib);
    else
        printf("transport: %s WebSocket on 127.0.0.1, %s (%s sends), %d KiB fragments, window %d chunks of 1 MiB\n",
               plain ? "plaintext" : "TLS", up ? "up" : "down", up ? "client" : "server", io_kib, window);
    fflush(stdout);

    nawal_ws_config cfg = { 0 };
    cfg.insecure_plaintext = plain;
    cfg.io_chunk = (size_t)io_kib << 10;
    cfg.max_connections = 4;
    cfg.ping_secs = 30;
    cfg.dead_secs = 120;
    int port_pipe[2], report_pipe[2];
    if (pipe(port_pipe) || pipe(report_pipe)) return 1;
    fflush(NULL);
    pid_t pid = fork();
    if (pid < 0) {
        perror("fork");
        return 1;
    }
    char err[512];
    if (pid == 0) { /* ---- server ---- */
        signal(SIGUSR1, on_usr1);
        close(port_pipe[0]);
        close(report_pipe[0]);
        end_state e = end_init(up, raw, size, window, src, dst, cid);
        nawal_ws_config scfg = cfg;
        scfg.bind_addr = "127.0.0.1";
        scfg.cert_file = cert;
        scfg.key_file = key;
        nawal_ws_handlers h = { h_open, h_message, h_drain, h_close, &e };
        end_report rep = { 0 };
        nawal_ws_server *s = end_prepare(&e, err, sizeof err) ? NULL : nawal_ws_server_new(&scfg, &h, err, sizeof err);
        int port = s ? nawal_ws_server_port(s) : -1;
        if (s && http) nawal_ws_server_set_http(s, http_blob, &e);
        if (write(port_pipe[1], &port, sizeof port) != sizeof port) _exit(1);
        if (!s) {
            snprintf(rep.err, sizeof rep.err, "%.200s", err);
        } else {
            rep.base_kib = status_kib("VmRSS");
            double tstart = bench_now_s();
            if (http) { /* serves until the client is done (SIGUSR1) */
                e.ok = 1;
                while (!g_http_done && bench_now_s() - tstart < 7200) nawal_ws_server_service(s, 100);
            }
            while (!http && !e.ended && bench_now_s() - tstart < 7200) nawal_ws_server_service(s, 100);
            rep.peak_kib = status_kib("VmHWM");
            rep.ok = e.ok;
            rep.t_transfer = e.t_last_chunk - e.t_request;
            rep.t_complete = e.t_complete - e.t_request;
            snprintf(rep.err, sizeof rep.err, "%s", e.err);
            nawal_ws_server_free(s);
        }
        end_finish(&e);
        if (write(report_pipe[1], &rep, sizeof rep) != sizeof rep) _exit(1);
        _exit(0);
    }
    /* ---- client ---- */
    close(port_pipe[1]);
    close(report_pipe[1]);
    int port = -1;
    if (read(port_pipe[0], &port, sizeof port) != sizeof port || port <= 0) {
        end_report rep = { 0 };
        if (read(report_pipe[0], &rep, sizeof rep) == sizeof rep) fprintf(stderr, "error: server: %s\n", rep.err);
        waitpid(pid, NULL, 0);
        return 1;
    }
    end_state e = end_init(up ? 0 : 1, raw, size, window, src, dst, cid);
    nawal_ws_config ccfg = cfg;
    ccfg.ca_file = plain ? NULL : cert;
    nawal_ws_handlers h = { h_open, h_message, h_drain, h_close, &e };
    nawal_ws_client *cl = NULL;
    int rc = 1;
    nawal_ws_fetch_handlers fh = { f_head, f_data, f_done, &e };
    long base = 0;
    int started = end_prepare(&e, err, sizeof err) == 0 && (cl = nawal_ws_client_new(&ccfg, &h, err, sizeof err));
    if (started) {
        base = status_kib("VmRSS");
        e.t_request = bench_now_s(); /* --http; the WebSocket path sets it again when its request goes out */
        started = http ? nawal_ws_client_fetch(cl, "127.0.0.1", port, "/blob", NULL, 0, &fh, err, sizeof err) != NULL
                       : nawal_ws_client_connect(cl, "127.0.0.1", port, "/", err, sizeof err) != NULL;
    }
    if (!started) {
        fprintf(stderr, "error: client: %s\n", err);
        kill(pid, SIGTERM);
    } else {
        double tstart = bench_now_s();
        while (!e.ended && bench_now_s() - tstart < 7200) nawal_ws_client_service(cl, 100);
        if (http) kill(pid, SIGUSR1);
        long peak = status_kib("VmHWM");
        end_report srv = { 0 };
        ssize_t got = read(report_pipe[0], &srv, sizeof srv);
        if (got != (ssize_t)sizeof srv) snprintf(srv.err, sizeof srv.err, "server process reported nothing");
        const end_report *rx = up ? &srv : NULL;
        double t_transfer = up ? rx->t_transfer : e.t_last_chunk - e.t_request;
        double t_complete = up ? rx->t_complete : e.t_complete - e.t_request;
        int ok = e.ok && srv.ok;
        if (ok) {
            printf("transfer: %.2f s, %.0f MB/s (request to last chunk received)\n", t_transfer,
                   (double)size / t_transfer / 1e6);
            if (!raw)
                printf("complete: %.2f s, %.0f MB/s (to CID verified, synced and renamed)\n", t_complete,
                       (double)size / t_complete / 1e6);
            print_end("client", !up, peak, base);
            print_end("server", up, srv.peak_kib, srv.base_kib);
            rc = 0;
        } else {
            fprintf(stderr, "error: transfer failed: client: %s; server: %s\n", e.err[0] ? e.err : "-",
                    srv.err[0] ? srv.err : "-");
        }
    }
    nawal_ws_client_free(cl);
    end_finish(&e);
    waitpid(pid, NULL, 0);
    if (!keep) {
        unlink(src);
        unlink(dst);
        char part[640];
        snprintf(part, sizeof part, "%s.part", dst);
        unlink(part);
        unlink(cert);
        unlink(key);
        rmdir(tmp);
    } else {
        printf("files kept in %s\n", tmp);
    }
    return rc;
}
