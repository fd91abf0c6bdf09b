/* accountant.c - see accountant.h. RDP of the subsampled Gaussian mechanism
 * in log space (binomial series for integer orders, two erfc-weighted
 * series for fractional ones), Balle / classic conversion to (eps, delta),
 * composition, and the noise-multiplier search. */
#include "accountant.h"
#include "error.h"
#include <math.h>
#include <string.h>

/* Terms of the fractional-order series below this log value end the sum
 * (Opacus and TF Privacy stop at the same point). */
#define FRAC_SERIES_LOG_CUTOFF (-30.0)
/* Bound on the fractional series' length: far above what any valid
 * (q, sigma, order) needs, so reaching it means a numerical failure. */
#define FRAC_SERIES_MAX_TERMS 2000000
#define SEARCH_MAX_ITERS 400

/* log(exp(x) + exp(y)), with -inf standing for 0. */
static double log_add(double x, double y) {
    if (x == -INFINITY) return y;
    if (y == -INFINITY) return x;
    if (x == INFINITY || y == INFINITY) return INFINITY;
    double hi = x > y ? x : y, lo = x > y ? y : x;
    return hi + log1p(exp(lo - hi));
}

/* log(exp(x) - exp(y)); requires x >= y (the series it serves is a sum of
 * non-negative parts, so x < y means the arithmetic broke down). */
static int log_sub(double x, double y, double *out) {
    if (x < y) return -1;
    if (y == -INFINITY) { *out = x; return 0; }
    if (x == y) { *out = -INFINITY; return 0; }
    double d = expm1(x - y);
    *out = isinf(d) ? x : log(d) + y; /* exp(y) negligible next to exp(x) */
    return 0;
}

/* log(erfc(x)), accurate where erfc underflows: for x >= 26 the asymptotic
 * series erfc(x) = exp(-x^2) / (x sqrt(pi)) * sum_n (-1)^n (2n-1)!! / (2x^2)^n,
 * whose first omitted term is below 1e-16 there. */
static double log_erfc(double x) {
    if (x < 26.0) return log(erfc(x));
    double t = 1.0 / (2.0 * x * x);
    double s = 1.0 - t * (1.0 - 3.0 * t * (1.0 - 5.0 * t * (1.0 - 7.0 * t * (1.0 - 9.0 * t * (1.0 - 11.0 * t)))));
    return -x * x - log(x) - 0.5 * log(M_PI) + log(s);
}

/* log A_alpha for integer alpha >= 2, 0 < q < 1. */
static double log_a_int(double q, double sigma, long alpha) {
    double lq = log(q), l1q = log1p(-q), two_s2 = 2.0 * sigma * sigma;
    double log_coef = 0.0; /* log C(alpha, i), built up term by term */
    double la = -INFINITY;
    for (long i = 0; i <= alpha; i++) {
        if (i > 0) log_coef += log((double)(alpha - i + 1)) - log((double)i);
        double di = (double)i;
        la = log_add(la, log_coef + di * lq + (double)(alpha - i) * l1q + (di * di - di) / two_s2);
    }
    return la;
}

/* log A_alpha for fractional alpha > 1, 0 < q < 1: the integrals over
 * (-inf, z0] and [z0, inf) as two alternating series. */
static int log_a_frac(double q, double sigma, double alpha, double *out, char *err, size_t errlen) {
    double lq = log(q), l1q = log1p(-q), s2 = sigma * sigma;
    double z0 = s2 * log(1.0 / q - 1.0) + 0.5, sq2s = sqrt(2.0) * sigma;
    double la0 = -INFINITY, la1 = -INFINITY;
    double log_coef = 0.0; /* log |C(alpha, i)| */
    int neg = 0;           /* sign of C(alpha, i) */
    for (long i = 0; i < FRAC_SERIES_MAX_TERMS; i++) {
        if (i > 0) {
            double f = alpha - (double)(i - 1); /* C(a, i) = C(a, i-1) (a - i + 1) / i */
            log_coef += log(fabs(f)) - log((double)i);
            if (f < 0) neg = !neg;
        }
        double di = (double)i, j = alpha - di;
        double lt0 = log_coef + di * lq + j * l1q, lt1 = log_coef + j * lq + di * l1q;
        double le0 = log(0.5) + log_erfc((di - z0) / sq2s), le1 = log(0.5) + log_erfc((z0 - j) / sq2s);
        double ls0 = lt0 + (di * di - di) / (2.0 * s2) + le0, ls1 = lt1 + (j * j - j) / (2.0 * s2) + le1;
        if (!neg) {
            la0 = log_add(la0, ls0);
            la1 = log_add(la1, ls1);
        } else if (log_sub(la0, ls0, &la0) || log_sub(la1, ls1, &la1)) {
            return nawal_fail(err, errlen, "RDP series lost precision (q=%g, sigma=%g, order %g)", q, sigma, alpha);
        }
        if (isnan(la0) || isnan(la1))
            return nawal_fail(err, errlen, "RDP series is not a number (q=%g, sigma=%g, order %g)", q, sigma, alpha);
        if ((ls0 > ls1 ? ls0 : ls1) < FRAC_SERIES_LOG_CUTOFF) {
            *out = log_add(la0, la1);
            return 0;
        }
    }
    return nawal_fail(err, errlen, "RDP series did not converge in %d terms (q=%g, sigma=%g, order %g)",
                      FRAC_SERIES_MAX_TERMS, q, sigma, alpha);
}

static int check_order(double alpha, char *err, size_t errlen) {
    if (!(alpha > 1.0 && alpha <= NAWAL_RDP_MAX_ORDER)) /* also rejects NaN */
        return nawal_fail(err, errlen, "RDP order %g is outside (1, %g]", alpha, NAWAL_RDP_MAX_ORDER);
    return 0;
}

static int check_mechanism(double q, double sigma, char *err, size_t errlen) {
    if (!(q >= 0.0 && q <= 1.0)) return nawal_fail(err, errlen, "sampling rate %g is outside [0, 1]", q);
    if (!(sigma >= 0.0 && isfinite(sigma)))
        return nawal_fail(err, errlen, "noise multiplier %g is not a finite number >= 0", sigma);
    return 0;
}

/* RDP of one step at one order; inputs already checked. */
static int rdp_one(double q, double sigma, double alpha, double *out, char *err, size_t errlen) {
    if (q == 0.0) { *out = 0.0; return 0; }
    if (sigma == 0.0) { *out = INFINITY; return 0; }
    if (q == 1.0) { *out = alpha / (2.0 * sigma * sigma); return 0; }
    double la = NAN;
    if (alpha == floor(alpha)) la = log_a_int(q, sigma, (long)alpha);
    else if (log_a_frac(q, sigma, alpha, &la, err, errlen)) return -1;
    if (isnan(la)) return nawal_fail(err, errlen, "RDP is not a number (q=%g, sigma=%g, order %g)", q, sigma, alpha);
    /* A_alpha >= 1 in exact arithmetic; rounding can leave a hair below. */
    *out = la > 0.0 ? la / (alpha - 1.0) : 0.0;
    return 0;
}

void nawal_rdp_default_orders(double orders[NAWAL_RDP_N_DEFAULT_ORDERS]) {
    size_t k = 0;
    for (int x = 1; x < 100; x++) orders[k++] = 1.0 + x / 10.0;
    for (int a = 12; a < 64; a++) orders[k++] = a;
}

int nawal_rdp_compute(double q, double sigma, uint64_t steps, const double *orders, size_t n, double *rdp,
                      char *err, size_t errlen) {
    if (!orders || !rdp || n == 0) return nawal_fail(err, errlen, "no RDP orders given");
    if (check_mechanism(q, sigma, err, errlen)) return -1;
    for (size_t k = 0; k < n; k++)
        if (check_order(orders[k], err, errlen)) return -1;
    for (size_t k = 0; k < n; k++) {
        double r = NAN;
        if (rdp_one(q, sigma, orders[k], &r, err, errlen)) return -1;
        rdp[k] = steps == 0 || r == 0.0 ? 0.0 : r * (double)steps; /* 0 steps of an infinite cost is 0 */
    }
    return 0;
}

typedef enum { CONVERT_BALLE, CONVERT_CLASSIC } convert_kind;

static int rdp_to_eps(convert_kind kind, const double *orders, const double *rdp, size_t n, double delta, double *eps,
                      double *best_order, char *err, size_t errlen) {
    if (!orders || !rdp || n == 0) return nawal_fail(err, errlen, "no RDP orders given");
    if (!(delta > 0.0 && delta < 1.0)) return nawal_fail(err, errlen, "delta %g is outside (0, 1)", delta);
    int all_zero = 1;
    for (size_t k = 0; k < n; k++) {
        if (check_order(orders[k], err, errlen)) return -1;
        if (!(rdp[k] >= 0.0)) return nawal_fail(err, errlen, "RDP %g at order %g is not >= 0", rdp[k], orders[k]);
        if (rdp[k] != 0.0) all_zero = 0;
    }
    double best = INFINITY, best_a = orders[0], ld = log(delta);
    for (size_t k = 0; k < n; k++) {
        double a = orders[k], e;
        if (kind == CONVERT_BALLE) e = rdp[k] - (ld + log(a)) / (a - 1.0) + log((a - 1.0) / a);
        else e = rdp[k] - ld / (a - 1.0);
        if (e < best) { best = e; best_a = a; }
    }
    *eps = all_zero || best < 0.0 ? 0.0 : best;
    if (best_order) *best_order = best_a;
    return 0;
}

int nawal_rdp_to_epsilon(const double *orders, const double *rdp, size_t n, double delta, double *eps,
                         double *best_order, char *err, size_t errlen) {
    return rdp_to_eps(CONVERT_BALLE, orders, rdp, n, delta, eps, best_order, err, errlen);
}

int nawal_rdp_to_epsilon_classic(const double *orders, const double *rdp, size_t n, double delta, double *eps,
                                 double *best_order, char *err, size_t errlen) {
    return rdp_to_eps(CONVERT_CLASSIC, orders, rdp, n, delta, eps, best_order, err, errlen);
}

int nawal_accountant_init(nawal_accountant *a, const double *orders, size_t n, char *err, size_t errlen) {
    if (!orders) {
        memset(a, 0, sizeof *a);
        a->n = NAWAL_RDP_N_DEFAULT_ORDERS;
        nawal_rdp_default_orders(a->orders);
        return 0;
    }
    if (n == 0 || n > NAWAL_RDP_MAX_ORDERS)
        return nawal_fail(err, errlen, "%zu RDP orders: need 1 to %d", n, NAWAL_RDP_MAX_ORDERS);
    for (size_t k = 0; k < n; k++) {
        if (check_order(orders[k], err, errlen)) return -1;
        for (size_t m = 0; m < k; m++)
            if (orders[m] == orders[k]) return nawal_fail(err, errlen, "RDP order %g given twice", orders[k]);
    }
    memset(a, 0, sizeof *a);
    a->n = n;
    memcpy(a->orders, orders, n * sizeof *orders);
    return 0;
}

static int check_accountant(const nawal_accountant *a, char *err, size_t errlen) {
    if (a->n == 0 || a->n > NAWAL_RDP_MAX_ORDERS) return nawal_fail(err, errlen, "accountant is not initialised");
    return 0;
}

int nawal_accountant_add(nawal_accountant *a, double q, double sigma, uint64_t steps, char *err, size_t errlen) {
    if (check_accountant(a, err, errlen)) return -1;
    double step_rdp[NAWAL_RDP_MAX_ORDERS];
    if (nawal_rdp_compute(q, sigma, steps, a->orders, a->n, step_rdp, err, errlen)) return -1;
    for (size_t k = 0; k < a->n; k++) a->rdp[k] += step_rdp[k];
    return 0;
}

int nawal_accountant_compose(nawal_accountant *a, const nawal_accountant *b, char *err, size_t errlen) {
    if (check_accountant(a, err, errlen) || check_accountant(b, err, errlen)) return -1;
    if (a->n != b->n || memcmp(a->orders, b->orders, a->n * sizeof a->orders[0]) != 0)
        return nawal_fail(err, errlen, "cannot compose accountants over different RDP orders");
    for (size_t k = 0; k < b->n; k++)
        if (!(b->rdp[k] >= 0.0))
            return nawal_fail(err, errlen, "RDP %g at order %g is not >= 0", b->rdp[k], b->orders[k]);
    for (size_t k = 0; k < a->n; k++) a->rdp[k] += b->rdp[k];
    return 0;
}

int nawal_accountant_epsilon(const nawal_accountant *a, double delta, double *eps, double *best_order, char *err,
                             size_t errlen) {
    if (check_accountant(a, err, errlen)) return -1;
    return nawal_rdp_to_epsilon(a->orders, a->rdp, a->n, delta, eps, best_order, err, errlen);
}

int nawal_accountant_epsilon_after(const nawal_accountant *a, double q, double sigma, uint64_t steps, double delta,
                                   double *eps, double *best_order, char *err, size_t errlen) {
    nawal_accountant t = *a;
    if (nawal_accountant_add(&t, q, sigma, steps, err, errlen)) return -1;
    return nawal_accountant_epsilon(&t, delta, eps, best_order, err, errlen);
}

/* epsilon of `steps` steps of (q, sigma) on the default grid. */
static int eps_for_sigma(double q, double sigma, uint64_t steps, double delta, double *eps, char *err, size_t errlen) {
    nawal_accountant a;
    nawal_accountant_init(&a, NULL, 0, NULL, 0);
    return nawal_accountant_epsilon_after(&a, q, sigma, steps, delta, eps, NULL, err, errlen);
}

int nawal_noise_multiplier_for_epsilon(double target_eps, double q, uint64_t steps, double delta, double eps_tol,
                                       double *sigma, double *eps_at, char *err, size_t errlen) {
    if (!(target_eps > 0.0 && isfinite(target_eps)))
        return nawal_fail(err, errlen, "target epsilon %g is not a finite number > 0", target_eps);
    if (!(q > 0.0 && q <= 1.0)) return nawal_fail(err, errlen, "sampling rate %g is outside (0, 1]", q);
    if (steps == 0) return nawal_fail(err, errlen, "steps must be at least 1");
    if (!(delta > 0.0 && delta < 1.0)) return nawal_fail(err, errlen, "delta %g is outside (0, 1)", delta);
    if (!(eps_tol > 0.0 && isfinite(eps_tol)))
        return nawal_fail(err, errlen, "epsilon tolerance %g is not > 0", eps_tol);

    /* The floor: what the conversion gives as sigma -> infinity (RDP -> 0+). */
    double orders[NAWAL_RDP_N_DEFAULT_ORDERS], tiny[NAWAL_RDP_N_DEFAULT_ORDERS], floor_eps, floor_order;
    nawal_rdp_default_orders(orders);
    for (size_t k = 0; k < NAWAL_RDP_N_DEFAULT_ORDERS; k++) tiny[k] = 1e-300;
    if (nawal_rdp_to_epsilon(orders, tiny, NAWAL_RDP_N_DEFAULT_ORDERS, delta, &floor_eps, &floor_order, err, errlen))
        return -1;
    if (target_eps <= floor_eps)
        return nawal_fail(err, errlen,
                          "target epsilon %g is unreachable at delta %g: even unbounded noise only certifies "
                          "epsilon %.6g (order %g); raise epsilon or delta",
                          target_eps, delta, floor_eps, floor_order);

    double lo = 0.0, hi = 1.0, e_hi;
    for (;;) {
        if (eps_for_sigma(q, hi, steps, delta, &e_hi, err, errlen)) return -1;
        if (e_hi <= target_eps) break;
        lo = hi;
        hi *= 2.0;
        if (hi > NAWAL_NOISE_MAX_SIGMA)
            return nawal_fail(err, errlen,
                              "target epsilon %g is unreachable: %llu steps at sampling rate %g need a noise "
                              "multiplier above %g",
                              target_eps, (unsigned long long)steps, q, NAWAL_NOISE_MAX_SIGMA);
    }
    /* Invariant: eps(hi) = e_hi <= target_eps < eps(lo) (lo == 0: infinite). */
    for (int it = 0; it < SEARCH_MAX_ITERS && target_eps - e_hi > eps_tol && hi - lo > 1e-12 * hi; it++) {
        double mid = 0.5 * (lo + hi), e;
        if (eps_for_sigma(q, mid, steps, delta, &e, err, errlen)) return -1;
        if (e <= target_eps) { hi = mid; e_hi = e; }
        else lo = mid;
    }
    *sigma = hi;
    if (eps_at) *eps_at = e_hi;
    return 0;
}
