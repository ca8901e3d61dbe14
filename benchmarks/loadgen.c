/*
 * fn64load: connection-rate and request/response latency load for the data
 * path benchmark (benchmarks/datapath.py).
 *
 * Written in C so that the client and server cost little next to the path
 * they measure: under emulation a Python client would spend more time in the
 * interpreter than the kernel spends on a connection, and the ratio between
 * two paths would be diluted by that constant.
 *
 *   fn64load serve PORT [LIFETIME [NPORTS]]
 *       TCP and UDP on [::]:PORT .. PORT+NPORTS-1 (IPv4 too; NPORTS default
 *       1). A TCP connection gets one response to its first request and is
 *       closed by the server (so the server, not the client, holds
 *       TIME_WAIT). UDP datagrams are echoed from the address they were sent
 *       to. Exits after LIFETIME seconds (default 3600) or when its parent dies.
 *
 *   fn64load crr ADDR PORT CONCURRENCY SECONDS
 *       Closed loop of new TCP connections, CONCURRENCY at a time: connect,
 *       send a 32-byte request, read the 64-byte response and the server's
 *       FIN, close. Every connection is a new 5-tuple. Prints JSON: completed
 *       connections per second and per-connection latency percentiles.
 *
 *   fn64load udprr ADDR PORT SECONDS [SIZE]
 *       One outstanding UDP request at a time (SIZE bytes, default 64); prints
 *       JSON with the round-trip time percentiles and the losses.
 *
 *   fn64load udpfill ADDR PORT FIRST COUNT RATE
 *   fn64load tcpfill ADDR PORT FIRST COUNT CONCURRENCY
 *       Flows numbered FIRST .. FIRST+COUNT-1, flow i from source port
 *       FILL_SPORT0 + i % FILL_SPORTS to destination port PORT + i / FILL_SPORTS,
 *       so every flow is a new 5-tuple and running a range again reopens the
 *       same flows (a top-up, not new ones). udpfill sends one datagram per
 *       flow, RATE per second at most (0: no limit), and waits for nothing;
 *       tcpfill makes each flow a whole connection (connect, request, answer,
 *       close), CONCURRENCY at a time. Both print JSON: flows done and failed.
 *       They fill a NAT64's session table (benchmarks/busy.py).
 */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
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

#define REQUEST_BYTES 32
#define RESPONSE_BYTES 64
#define CONNECTION_TIMEOUT_NS (3 * 1000000000LL)
#define MAX_CONCURRENCY 4096
#define MAX_EVENTS 256
#define MAX_SERVE_PORTS 64
/* Fill flows use source ports below Linux's default ephemeral range (32768-60999). */
#define FILL_SPORT0 1024
#define FILL_SPORTS 20000

static int64_t now_ns(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (int64_t)ts.tv_sec * 1000000000LL + ts.tv_nsec;
}

static void die(const char *what)
{
	fprintf(stderr, "fn64load: %s: %s\n", what, strerror(errno));
	exit(1);
}

static int parse_addr(const char *text, int port, struct sockaddr_storage *ss, socklen_t *len)
{
	struct sockaddr_in *in4 = (struct sockaddr_in *)ss;
	struct sockaddr_in6 *in6 = (struct sockaddr_in6 *)ss;

	memset(ss, 0, sizeof(*ss));
	if (inet_pton(AF_INET6, text, &in6->sin6_addr) == 1) {
		in6->sin6_family = AF_INET6;
		in6->sin6_port = htons(port);
		*len = sizeof(*in6);
		return AF_INET6;
	}
	if (inet_pton(AF_INET, text, &in4->sin_addr) == 1) {
		in4->sin_family = AF_INET;
		in4->sin_port = htons(port);
		*len = sizeof(*in4);
		return AF_INET;
	}
	fprintf(stderr, "fn64load: not an address: %s\n", text);
	exit(2);
}

/* ---- latency samples ------------------------------------------------------ */

struct samples {
	int64_t *v;
	size_t n, cap;
};

static void sample_add(struct samples *s, int64_t value)
{
	if (s->n == s->cap) {
		s->cap = s->cap ? s->cap * 2 : 65536;
		s->v = realloc(s->v, s->cap * sizeof(*s->v));
		if (!s->v)
			die("realloc");
	}
	s->v[s->n++] = value;
}

static int cmp_i64(const void *a, const void *b)
{
	int64_t x = *(const int64_t *)a, y = *(const int64_t *)b;
	return (x > y) - (x < y);
}

/* Nearest-rank percentile, in microseconds. */
static double percentile_us(const struct samples *s, double p)
{
	size_t rank;

	if (!s->n)
		return 0.0;
	rank = (size_t)((p / 100.0) * (double)s->n + 0.999999);
	if (rank < 1)
		rank = 1;
	if (rank > s->n)
		rank = s->n;
	return (double)s->v[rank - 1] / 1000.0;
}

static void print_latencies(const struct samples *s)
{
	qsort(s->v, s->n, sizeof(*s->v), cmp_i64);
	printf("\"p50_us\": %.1f, \"p90_us\": %.1f, \"p99_us\": %.1f, \"p999_us\": %.1f, \"max_us\": %.1f",
	       percentile_us(s, 50), percentile_us(s, 90), percentile_us(s, 99), percentile_us(s, 99.9),
	       percentile_us(s, 100));
}

/* ---- errors by name --------------------------------------------------------- */

#define MAX_ERRNO 256
static long error_counts[MAX_ERRNO + 2]; /* [MAX_ERRNO + 1]: timeouts */

static void count_error(int err)
{
	error_counts[err > 0 && err <= MAX_ERRNO ? err : MAX_ERRNO + 1]++;
}

static void print_errors(void)
{
	int first = 1;

	printf("\"errors\": {");
	for (int i = 1; i <= MAX_ERRNO + 1; i++) {
		if (!error_counts[i])
			continue;
		printf("%s\"%s\": %ld", first ? "" : ", ",
		       i == MAX_ERRNO + 1 ? "timeout" : strerrorname_np(i) ? strerrorname_np(i) : "unknown",
		       error_counts[i]);
		first = 0;
	}
	printf("}");
}

/* ---- server ------------------------------------------------------------------ */

/*
 * Echoes one datagram from the address it was sent to. The server's addresses
 * sit on its loopback, so a reply from the wildcard socket would otherwise
 * leave from the address of the outgoing link: a NAT (the node's masquerade of
 * the translated leg) would not recognise it as the reply to its flow.
 */
static ssize_t udp_echo(int udp, char *buf, size_t size)
{
	struct sockaddr_in6 peer;
	struct iovec iov = { .iov_base = buf, .iov_len = size };
	union {
		char raw[CMSG_SPACE(sizeof(struct in6_pktinfo))];
		struct cmsghdr align;
	} control;
	struct msghdr msg = { .msg_name = &peer, .msg_namelen = sizeof(peer), .msg_iov = &iov,
			      .msg_iovlen = 1, .msg_control = control.raw,
			      .msg_controllen = sizeof(control.raw) };
	struct in6_pktinfo *info = NULL;
	ssize_t got = recvmsg(udp, &msg, 0);

	if (got < 0)
		return got;
	for (struct cmsghdr *c = CMSG_FIRSTHDR(&msg); c; c = CMSG_NXTHDR(&msg, c))
		if (c->cmsg_level == IPPROTO_IPV6 && c->cmsg_type == IPV6_PKTINFO)
			info = (struct in6_pktinfo *)CMSG_DATA(c);
	iov.iov_len = got;
	if (info) {
		/* Same source address (an IPv4 one arrives v4-mapped), any outgoing link. */
		info->ipi6_ifindex = 0;
		msg.msg_controllen = CMSG_SPACE(sizeof(*info));
	} else {
		msg.msg_control = NULL;
		msg.msg_controllen = 0;
	}
	if (sendmsg(udp, &msg, 0) < 0) {
		/* a full socket buffer: the client counts the datagram as lost */
	}
	return got;
}

/* A listening TCP socket and a UDP socket on [::]:port, both added to ep. */
static void listen_on(int ep, int port, int *tcp, int *udp)
{
	struct sockaddr_in6 addr = { .sin6_family = AF_INET6, .sin6_port = htons(port),
				     .sin6_addr = IN6ADDR_ANY_INIT };
	struct epoll_event ev = { .events = EPOLLIN };
	int zero = 0, one = 1;

	*tcp = socket(AF_INET6, SOCK_STREAM | SOCK_NONBLOCK, 0);
	*udp = socket(AF_INET6, SOCK_DGRAM | SOCK_NONBLOCK, 0);
	if (*tcp < 0 || *udp < 0)
		die("socket");
	setsockopt(*tcp, SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one));
	setsockopt(*tcp, IPPROTO_IPV6, IPV6_V6ONLY, &zero, sizeof(zero));
	setsockopt(*udp, IPPROTO_IPV6, IPV6_V6ONLY, &zero, sizeof(zero));
	setsockopt(*udp, IPPROTO_IPV6, IPV6_RECVPKTINFO, &one, sizeof(one));
	if (bind(*tcp, (struct sockaddr *)&addr, sizeof(addr)) || bind(*udp, (struct sockaddr *)&addr, sizeof(addr)))
		die("bind");
	if (listen(*tcp, 4096))
		die("listen");
	ev.data.fd = *tcp;
	epoll_ctl(ep, EPOLL_CTL_ADD, *tcp, &ev);
	ev.data.fd = *udp;
	epoll_ctl(ep, EPOLL_CTL_ADD, *udp, &ev);
}

static int is_one_of(int fd, const int *fds, int n)
{
	for (int i = 0; i < n; i++)
		if (fds[i] == fd)
			return 1;
	return 0;
}

static int serve(int port, int lifetime, int nports)
{
	int ep, tcps[MAX_SERVE_PORTS], udps[MAX_SERVE_PORTS];
	struct epoll_event ev, events[MAX_EVENTS];
	char buf[65536];
	int64_t deadline = now_ns() + (int64_t)lifetime * 1000000000LL;
	struct rlimit rl = { 65536, 65536 };

	if (nports < 1 || nports > MAX_SERVE_PORTS) {
		fprintf(stderr, "fn64load: 1 to %d ports\n", MAX_SERVE_PORTS);
		return 2;
	}
	prctl(PR_SET_PDEATHSIG, SIGTERM);
	setrlimit(RLIMIT_NOFILE, &rl);
	ep = epoll_create1(0);
	for (int i = 0; i < nports; i++)
		listen_on(ep, port + i, &tcps[i], &udps[i]);
	printf("READY\n");
	fflush(stdout);

	while (now_ns() < deadline) {
		int n = epoll_wait(ep, events, MAX_EVENTS, 1000);

		for (int i = 0; i < n; i++) {
			int fd = events[i].data.fd;

			if (is_one_of(fd, tcps, nports)) {
				int c;

				while ((c = accept4(fd, NULL, NULL, SOCK_NONBLOCK)) >= 0) {
					ev.events = EPOLLIN;
					ev.data.fd = c;
					epoll_ctl(ep, EPOLL_CTL_ADD, c, &ev);
				}
			} else if (is_one_of(fd, udps, nports)) {
				for (;;) {
					if (udp_echo(fd, buf, sizeof(buf)) < 0)
						break;
				}
			} else {
				ssize_t got = read(fd, buf, sizeof(buf));

				if (got > 0) {
					memset(buf, 'r', RESPONSE_BYTES);
					if (write(fd, buf, RESPONSE_BYTES) < 0) {
						/* the peer is gone: nothing to answer */
					}
				}
				if (got > 0 || got == 0 || errno != EAGAIN)
					close(fd); /* also leaves the epoll set */
			}
		}
	}
	return 0;
}

/* ---- connection rate client -------------------------------------------------- */

enum conn_state { IDLE, CONNECTING, READING };

struct conn {
	int fd;
	enum conn_state state;
	int64_t started;
	int got;
};

/* Which flow a fill number is: its source port, and its destination port from `port` on. */
static int fill_sport(long flow)
{
	return FILL_SPORT0 + (int)(flow % FILL_SPORTS);
}

static int fill_dport(int port, long flow)
{
	return port + (int)(flow / FILL_SPORTS);
}

/* Binds a socket to the fill flow's source port (0: any) and sets the flow's destination port. */
static int fill_bind(int fd, int family, int sport, struct sockaddr_storage *dst, int dport)
{
	struct sockaddr_storage src;
	int one = 1;

	memset(&src, 0, sizeof(src));
	src.ss_family = family;
	if (family == AF_INET6) {
		((struct sockaddr_in6 *)&src)->sin6_port = htons(sport);
		((struct sockaddr_in6 *)dst)->sin6_port = htons(dport);
	} else {
		((struct sockaddr_in *)&src)->sin_port = htons(sport);
		((struct sockaddr_in *)dst)->sin_port = htons(dport);
	}
	if (!sport)
		return 0;
	setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one));
	return bind(fd, (struct sockaddr *)&src, family == AF_INET6 ? sizeof(struct sockaddr_in6)
								       : sizeof(struct sockaddr_in));
}

/*
 * Closed loop of TCP connections, CONCURRENCY at a time: for SECONDS (crr),
 * or for the fill flows FIRST .. FIRST+COUNT-1 (count >= 0, tcpfill).
 */
static int connections(const char *dst, int port, int concurrency, double seconds, long first, long count)
{
	struct sockaddr_storage ss;
	socklen_t sslen;
	int family = parse_addr(dst, port, &ss, &sslen);
	long next_flow = first;
	struct conn *conns;
	struct samples lat = { 0 };
	struct epoll_event ev, events[MAX_EVENTS];
	int ep = epoll_create1(0);
	int64_t start = now_ns(), stop_starting = start + (int64_t)(seconds * 1e9), last_done = start;
	long completed = 0, failed = 0, active = 0;
	char buf[4096];
	struct rlimit rl = { MAX_CONCURRENCY * 2 + 64, MAX_CONCURRENCY * 2 + 64 };

	if (concurrency < 1 || concurrency > MAX_CONCURRENCY) {
		fprintf(stderr, "fn64load: concurrency must be 1..%d\n", MAX_CONCURRENCY);
		return 2;
	}
	setrlimit(RLIMIT_NOFILE, &rl);
	conns = calloc(concurrency, sizeof(*conns));
	memset(buf, 'q', sizeof(buf));

	for (;;) {
		int64_t t = now_ns();

		/* Start connections into idle slots while the run lasts. */
		for (int i = 0; i < concurrency && (count < 0 ? t < stop_starting : next_flow < first + count); i++) {
			struct conn *c = &conns[i];
			int one = 1;
			long flow = next_flow;

			if (c->state != IDLE)
				continue;
			c->fd = socket(family, SOCK_STREAM | SOCK_NONBLOCK, 0);
			if (c->fd < 0) {
				count_error(errno);
				failed++;
				continue;
			}
			if (count >= 0) {
				next_flow++;
				if (fill_bind(c->fd, family, fill_sport(flow), &ss, fill_dport(port, flow))) {
					count_error(errno);
					failed++;
					close(c->fd);
					continue;
				}
			}
			setsockopt(c->fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
			c->started = now_ns();
			c->got = 0;
			if (connect(c->fd, (struct sockaddr *)&ss, sslen) && errno != EINPROGRESS) {
				count_error(errno);
				failed++;
				close(c->fd);
				continue;
			}
			c->state = CONNECTING;
			ev.events = EPOLLOUT;
			ev.data.u32 = i;
			epoll_ctl(ep, EPOLL_CTL_ADD, c->fd, &ev);
			active++;
		}
		if (!active && (count < 0 ? t >= stop_starting : next_flow >= first + count))
			break;

		int n = epoll_wait(ep, events, MAX_EVENTS, 50);

		for (int k = 0; k < n; k++) {
			struct conn *c = &conns[events[k].data.u32];
			int err = 0;
			socklen_t elen = sizeof(err);

			if (c->state == CONNECTING) {
				getsockopt(c->fd, SOL_SOCKET, SO_ERROR, &err, &elen);
				if (!err && write(c->fd, buf, REQUEST_BYTES) != REQUEST_BYTES)
					err = errno ? errno : EIO;
				if (!err) {
					c->state = READING;
					ev.events = EPOLLIN;
					ev.data.u32 = events[k].data.u32;
					epoll_ctl(ep, EPOLL_CTL_MOD, c->fd, &ev);
					continue;
				}
			} else {
				ssize_t got;

				while ((got = read(c->fd, buf, sizeof(buf))) > 0)
					c->got += got;
				if (got < 0 && errno == EAGAIN)
					continue;
				if (got < 0)
					err = errno;
				else if (c->got < RESPONSE_BYTES)
					err = EPIPE; /* closed before the whole answer */
			}
			if (err) {
				count_error(err);
				failed++;
			} else {
				int64_t done = now_ns();

				completed++;
				sample_add(&lat, done - c->started);
				last_done = done;
			}
			close(c->fd);
			c->state = IDLE;
			active--;
		}

		/* Abandon connections that take too long (a lost SYN, say). */
		t = now_ns();
		for (int i = 0; i < concurrency; i++) {
			struct conn *c = &conns[i];

			if (c->state != IDLE && t - c->started > CONNECTION_TIMEOUT_NS) {
				count_error(0);
				failed++;
				close(c->fd);
				c->state = IDLE;
				active--;
			}
		}
	}

	double elapsed = (double)(last_done - start) / 1e9;

	printf("{\"mode\": \"%s\", \"concurrency\": %d, \"completed\": %ld, \"failed\": %ld, "
	       "\"seconds\": %.4f, \"rate\": %.1f, ",
	       count < 0 ? "crr" : "tcpfill", concurrency, completed, failed, elapsed,
	       elapsed > 0 ? completed / elapsed : 0.0);
	print_latencies(&lat);
	printf(", ");
	print_errors();
	printf("}\n");
	return 0;
}

/* ---- session table fill ---------------------------------------------------- */

static int tcpfill(const char *dst, int port, long first, long count, int concurrency)
{
	if (first < 0 || count < 0) {
		fprintf(stderr, "fn64load: FIRST and COUNT are >= 0\n");
		return 2;
	}
	return connections(dst, port, concurrency, 0, first, count);
}

static int udpfill(const char *dst, int port, long first, long count, long rate)
{
	struct sockaddr_storage ss;
	socklen_t sslen;
	int family = parse_addr(dst, port, &ss, &sslen);
	long sent = 0, failed = 0;
	int64_t start = now_ns();

	if (first < 0 || count < 0 || rate < 0) {
		fprintf(stderr, "fn64load: FIRST, COUNT and RATE are >= 0\n");
		return 2;
	}
	for (long flow = first; flow < first + count; flow++) {
		int fd = socket(family, SOCK_DGRAM, 0);

		if (fd < 0 || fill_bind(fd, family, fill_sport(flow), &ss, fill_dport(port, flow)) ||
		    sendto(fd, "fill", 4, 0, (struct sockaddr *)&ss, sslen) != 4) {
			count_error(errno);
			failed++;
		} else {
			sent++;
		}
		if (fd >= 0)
			close(fd);
		/* Keep to RATE datagrams per second: sleep off any lead over the schedule. */
		if (rate) {
			int64_t due = start + (int64_t)((double)(flow - first + 1) * 1e9 / (double)rate);
			int64_t lead = due - now_ns();

			if (lead > 0)
				usleep((useconds_t)(lead / 1000));
		}
	}

	double elapsed = (double)(now_ns() - start) / 1e9;

	printf("{\"mode\": \"udpfill\", \"completed\": %ld, \"failed\": %ld, \"seconds\": %.4f, "
	       "\"rate\": %.1f, ", sent, failed, elapsed, elapsed > 0 ? sent / elapsed : 0.0);
	print_errors();
	printf("}\n");
	return 0;
}

/* ---- UDP request/response ------------------------------------------------------ */

static int udprr(const char *dst, int port, double seconds, int size)
{
	struct sockaddr_storage ss;
	socklen_t sslen;
	int family = parse_addr(dst, port, &ss, &sslen);
	int fd = socket(family, SOCK_DGRAM, 0);
	struct samples rtt = { 0 };
	long lost = 0;
	uint64_t seq = 0;
	char out[65536], in[65536];
	int64_t start = now_ns(), stop = start + (int64_t)(seconds * 1e9);

	if (size < 8 || size > (int)sizeof(out)) {
		fprintf(stderr, "fn64load: size must be 8..%zu\n", sizeof(out));
		return 2;
	}
	if (fd < 0 || connect(fd, (struct sockaddr *)&ss, sslen))
		die("udp connect");
	memset(out, 'u', size);
	while (now_ns() < stop) {
		struct pollfd pfd = { .fd = fd, .events = POLLIN };
		int64_t sent_at = now_ns(), wait_until = sent_at + 1000000000LL;
		int answered = 0, failed_recv = 0;

		seq++;
		memcpy(out, &seq, sizeof(seq));
		if (send(fd, out, size, 0) != size) {
			count_error(errno);
			lost++;
			usleep(1000);
			continue;
		}
		while (!answered) {
			int64_t left = wait_until - now_ns();

			if (left <= 0 || poll(&pfd, 1, (int)(left / 1000000) + 1) <= 0)
				break;
			ssize_t got = recv(fd, in, sizeof(in), 0);

			if (got < 0) {
				count_error(errno);
				failed_recv = 1;
				break;
			}
			if (got == size && !memcmp(in, &seq, sizeof(seq))) {
				sample_add(&rtt, now_ns() - sent_at);
				answered = 1;
			}
			/* else: a late answer to an earlier request; keep waiting */
		}
		if (!answered) {
			if (!failed_recv)
				count_error(0);
			lost++;
		}
	}

	double elapsed = (double)(now_ns() - start) / 1e9;

	printf("{\"mode\": \"udprr\", \"size\": %d, \"completed\": %zu, \"lost\": %ld, \"seconds\": %.4f, "
	       "\"rate\": %.1f, ",
	       size, rtt.n, lost, elapsed, rtt.n / elapsed);
	print_latencies(&rtt);
	printf(", ");
	print_errors();
	printf("}\n");
	return 0;
}

int main(int argc, char **argv)
{
	signal(SIGPIPE, SIG_IGN);
	if (argc >= 3 && !strcmp(argv[1], "serve"))
		return serve(atoi(argv[2]), argc > 3 ? atoi(argv[3]) : 3600, argc > 4 ? atoi(argv[4]) : 1);
	if (argc == 7 && !strcmp(argv[1], "udpfill"))
		return udpfill(argv[2], atoi(argv[3]), atol(argv[4]), atol(argv[5]), atol(argv[6]));
	if (argc == 7 && !strcmp(argv[1], "tcpfill"))
		return tcpfill(argv[2], atoi(argv[3]), atol(argv[4]), atol(argv[5]), atoi(argv[6]));
	if (argc == 6 && !strcmp(argv[1], "crr"))
		return connections(argv[2], atoi(argv[3]), atoi(argv[4]), atof(argv[5]), 0, -1);
	if ((argc == 5 || argc == 6) && !strcmp(argv[1], "udprr"))
		return udprr(argv[2], atoi(argv[3]), atof(argv[4]), argc == 6 ? atoi(argv[5]) : 64);
	fprintf(stderr, "usage: fn64load serve PORT [LIFETIME [NPORTS]] | crr ADDR PORT CONCURRENCY SECONDS | "
			"udprr ADDR PORT SECONDS [SIZE] | udpfill ADDR PORT FIRST COUNT RATE | "
			"tcpfill ADDR PORT FIRST COUNT CONCURRENCY\n");
	return 2;
}
