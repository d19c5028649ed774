/* UDP SIP flood sender for bench/bench_flood.py (compiled by it with cc -O2).
 *
 * Sends one SIP message over and over from SRC_IP to DST_IP:DST_PORT at RATE packets per
 * second for SECONDS, with sendmmsg(2) in batches of 64, paced against CLOCK_MONOTONIC. The
 * message is read from stdin; each run of 16 'X' in it is overwritten with the packet's
 * sequence number in hex, so that every INVITE has its own Call-ID and branch (a new
 * transaction each, the worst case for the switch).
 *
 *   flood SRC_IP DST_IP DST_PORT RATE SECONDS < message
 *
 * On exit it prints one line of JSON: {"sent": N, "errors": N, "seconds": S, "pps": R}.
 * RATE 0 means as fast as it can.
 */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#define BATCH 64
#define MAX_MSG 8192
#define MAX_HOLES 8

static double now(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return ts.tv_sec + ts.tv_nsec / 1e9;
}

int main(int argc, char **argv) {
    if (argc != 6) {
        fprintf(stderr, "usage: flood SRC_IP DST_IP DST_PORT RATE SECONDS < message\n");
        return 2;
    }
    double rate = atof(argv[4]), seconds = atof(argv[5]);
    static char msg[MAX_MSG];
    size_t len = fread(msg, 1, sizeof msg, stdin);
    if (len == 0 || len == sizeof msg) {
        fprintf(stderr, "flood: message empty or over %d bytes\n", MAX_MSG - 1);
        return 2;
    }
    size_t holes[MAX_HOLES];
    int nholes = 0;
    for (char *p = msg; (p = memmem(p, len - (p - msg), "XXXXXXXXXXXXXXXX", 16)) != NULL;
         p += 16) {
        if (nholes < MAX_HOLES) holes[nholes++] = (size_t)(p - msg);
    }

    int fd = socket(AF_INET, SOCK_DGRAM, 0);
    struct sockaddr_in src = {.sin_family = AF_INET}, dst = {.sin_family = AF_INET};
    if (fd < 0 || inet_pton(AF_INET, argv[1], &src.sin_addr) != 1 ||
        inet_pton(AF_INET, argv[2], &dst.sin_addr) != 1) {
        fprintf(stderr, "flood: bad address\n");
        return 2;
    }
    dst.sin_port = htons((uint16_t)atoi(argv[3]));
    int sndbuf = 4 << 20;
    setsockopt(fd, SOL_SOCKET, SO_SNDBUF, &sndbuf, sizeof sndbuf);
    if (bind(fd, (struct sockaddr *)&src, sizeof src) != 0 ||
        connect(fd, (struct sockaddr *)&dst, sizeof dst) != 0) {
        perror("flood: bind/connect");
        return 2;
    }

    static char bufs[BATCH][MAX_MSG];
    struct mmsghdr msgs[BATCH];
    struct iovec iov[BATCH];
    memset(msgs, 0, sizeof msgs);
    for (int i = 0; i < BATCH; i++) {
        memcpy(bufs[i], msg, len);
        iov[i].iov_base = bufs[i];
        iov[i].iov_len = len;
        msgs[i].msg_hdr.msg_iov = &iov[i];
        msgs[i].msg_hdr.msg_iovlen = 1;
    }

    uint64_t sent = 0, errors = 0, seq = 0;
    double start = now(), end = start + seconds;
    char hex[17];
    for (;;) {
        double t = now();
        if (t >= end) break;
        if (rate > 0) {
            double due = (t - start) * rate - (double)sent;
            if (due < 1) {
                struct timespec nap = {0, (long)((1 - due) / rate * 1e9)};
                if (nap.tv_nsec > 1000000) nap.tv_nsec = 1000000;
                nanosleep(&nap, NULL);
                continue;
            }
        }
        for (int i = 0; i < BATCH; i++) {
            snprintf(hex, sizeof hex, "%016llx", (unsigned long long)seq++);
            for (int h = 0; h < nholes; h++) memcpy(bufs[i] + holes[h], hex, 16);
        }
        int n = sendmmsg(fd, msgs, BATCH, 0);
        if (n < 0) {
            /* ECONNREFUSED after an ICMP unreachable, ENOBUFS when the queue is full. */
            errors++;
            if (errno != ECONNREFUSED && errno != ENOBUFS && errno != EAGAIN) {
                perror("flood: sendmmsg");
                break;
            }
            continue;
        }
        sent += (uint64_t)n;
    }
    double took = now() - start;
    printf("{\"sent\": %llu, \"errors\": %llu, \"seconds\": %.3f, \"pps\": %.0f}\n",
           (unsigned long long)sent, (unsigned long long)errors, took, sent / took);
    return 0;
}
