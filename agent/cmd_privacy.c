/* cmd_privacy.c - `nawal-agent privacy`: the privacy accountant
 * (model/accountant.h) on the command line, for planning a DP training run.
 *
 *   --noise-multiplier S --sample-rate Q --steps N --delta D
 *       prints `epsilon <float>`: what N steps of DP-SGD with Poisson
 *       sampling rate Q and noise multiplier S spend (RDP accountant, default
 *       orders, Balle et al. 2020 conversion);
 *   --epsilon E --sample-rate Q --steps N --delta D
 *       prints `noise_multiplier <float>`: the smallest noise multiplier
 *       (to the search's tolerance) that keeps those steps within E. It is
 *       printed rounded up, and the epsilon of the printed value is checked.
 *
 * The first line is the answer; a second line starting with '#' gives the
 * RDP order that attains epsilon. Exit status 2 on usage errors, 1 when the
 * target epsilon cannot be reached. Values are parsed as doubles here (the
 * shared flag parser's numbers are floats, too coarse for delta). */
#include "accountant.h"
#include "cli.h"
#include "cmds.h"
#include <errno.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>

/* Parses `--name v` as a double in the interval (lo, hi) / [lo, hi] as the
 * flags say; prints the usage error and returns -1 otherwise. */
static int flag_double(const char *name, const char *v, double lo, int lo_open, double hi, int hi_open, double *out) {
    char *end;
    errno = 0;
    double x = strtod(v, &end);
    if (!*v || *end || errno || !isfinite(x)) {
        fprintf(stderr, "error: --%s: invalid value '%s'\n", name, v);
        return -1;
    }
    if ((lo_open ? !(x > lo) : !(x >= lo)) || (hi_open ? !(x < hi) : !(x <= hi))) {
        fprintf(stderr, "error: --%s: %s is outside %c%g, %g%c\n", name, v, lo_open ? '(' : '[', lo, hi,
                hi_open ? ')' : ']');
        return -1;
    }
    *out = x;
    return 0;
}

/* eps of `steps` steps of (q, sigma) on the default orders. */
static int epsilon_of(double q, double sigma, uint64_t steps, double delta, double *eps, double *order) {
    nawal_accountant a;
    char err[256];
    if (nawal_accountant_init(&a, NULL, 0, err, sizeof err) ||
        nawal_accountant_epsilon_after(&a, q, sigma, steps, delta, eps, order, err, sizeof err)) {
        fprintf(stderr, "error: %s\n", err);
        return -1;
    }
    return 0;
}

/* sigma written with 8 significant digits, rounded up so that the printed
 * value is never below the one the search certified. */
static void format_up(char *buf, size_t n, double sigma) {
    snprintf(buf, n, "%.8g", sigma);
    double p = strtod(buf, NULL);
    if (p < sigma) snprintf(buf, n, "%.8g", p + pow(10.0, floor(log10(sigma)) - 7.0));
}

int nawal_cmd_privacy(int argc, char **argv) {
    const char *s_sigma = NULL, *s_eps = NULL, *s_q = NULL, *s_delta = NULL;
    uint64_t steps = 0;
    nawal_flag flags[] = {
        { "noise-multiplier", NAWAL_FLAG_STR, &s_sigma, "noise multiplier S > 0: print the epsilon it gives", 0, -1, 0, 0 },
        { "epsilon", NAWAL_FLAG_STR, &s_eps, "target epsilon E > 0: print the noise multiplier reaching it", 0, -1, 0, 0 },
        { "sample-rate", NAWAL_FLAG_STR, &s_q, "Poisson sampling rate Q in (0, 1] (expected batch / examples)", 0, -1, 1, 0 },
        { "steps", NAWAL_FLAG_U64, &steps, "number of training steps N >= 1", 1, 1e18, 1, 0 },
        { "delta", NAWAL_FLAG_STR, &s_delta, "delta D in (0, 1), e.g. below 1 / examples", 0, -1, 1, 0 },
    };
    int pr = nawal_flags_parse(argc, argv, flags, sizeof flags / sizeof flags[0],
                               "usage: nawal-agent privacy (--noise-multiplier S | --epsilon E) --sample-rate Q "
                               "--steps N --delta D\n\n"
                               "Privacy of N steps of DP-SGD with Poisson sampling (RDP accountant with Opacus's\n"
                               "orders, Balle et al. 2020 conversion). Prints `epsilon <float>` for a noise\n"
                               "multiplier, or `noise_multiplier <float>` for a target epsilon; a second line\n"
                               "(starting with '#') gives the RDP order that attains epsilon.");
    if (pr) return pr == 1 ? 0 : 2;
    if (!s_sigma == !s_eps) {
        fprintf(stderr, "error: give exactly one of --noise-multiplier and --epsilon (see --help)\n");
        return 2;
    }
    double q, delta, sigma = 0, target = 0, eps, order;
    if (flag_double("sample-rate", s_q, 0, 1, 1, 0, &q) || flag_double("delta", s_delta, 0, 1, 1, 1, &delta) ||
        (s_sigma && flag_double("noise-multiplier", s_sigma, 0, 1, HUGE_VAL, 1, &sigma)) ||
        (s_eps && flag_double("epsilon", s_eps, 0, 1, HUGE_VAL, 1, &target)))
        return 2;

    if (s_sigma) {
        if (epsilon_of(q, sigma, steps, delta, &eps, &order)) return 1;
        printf("epsilon %.8g\n# order %g (delta %g, %llu steps, sample rate %g, noise multiplier %g)\n", eps, order,
               delta, (unsigned long long)steps, q, sigma);
        return 0;
    }
    char err[512], buf[64];
    if (nawal_noise_multiplier_for_epsilon(target, q, steps, delta, 1e-6 * fmax(1.0, target), &sigma, NULL, err,
                                           sizeof err)) {
        fprintf(stderr, "error: %s\n", err);
        return 1;
    }
    format_up(buf, sizeof buf, sigma);
    if (epsilon_of(q, strtod(buf, NULL), steps, delta, &eps, &order)) return 1;
    if (eps > target) { /* cannot happen: eps falls as sigma grows */
        fprintf(stderr, "error: noise multiplier %s gives epsilon %.8g above the target %g\n", buf, eps, target);
        return 1;
    }
    printf("noise_multiplier %s\n# epsilon %.8g at order %g (delta %g, %llu steps, sample rate %g)\n", buf, eps,
           order, delta, (unsigned long long)steps, q);
    return 0;
}
