/*
 * rfc3339 — timestamps in and out of the kubelet's RFC 3339 form.
 *
 * Hot path: called once per CRI/docker line. No locale, no libc time
 * functions (strptime/timegm/mktime): dates are converted with Howard
 * Hinnant's days-from-civil / civil-from-days formulas, O(1), no tables.
 *
 * Accepted: `YYYY-MM-DD[Tt]hh:mm:ss[.f{1,9}]([Zz]|[+-]hh:mm)`, years
 * 0001..9999, real calendar days (leap years), hour 0..23, minute 0..59,
 * second 0..60 (a leap second is simply added: :60 reads as the next
 * minute's :00). The result must fit int64 nanoseconds (about years
 * 1677..2262); outside that range -1 is returned rather than a wrapped value.
 */
#include "parser.h"

#define NS_PER_SEC 1000000000LL

static inline bool is_digit(unsigned char c) { return (unsigned)(c - '0') < 10u; }

/* Two ASCII digits at p (caller checked the bounds); -1 when not digits. */
static inline int two_digits(const unsigned char *p)
{
    if (!is_digit(p[0]) || !is_digit(p[1]))
        return -1;
    return (p[0] - '0') * 10 + (p[1] - '0');
}

static inline bool is_leap(int y) { return (y % 4 == 0 && y % 100 != 0) || y % 400 == 0; }

static inline int days_in_month(int y, int m)
{
    static const unsigned char dim[12] = {31, 28, 31, 30, 31, 30, 31, 31, 30, 31, 30, 31};
    return m == 2 && is_leap(y) ? 29 : dim[m - 1];
}

/* Days since 1970-01-01 of the proleptic Gregorian date y-m-d. */
static inline int64_t days_from_civil(int64_t y, int m, int d)
{
    y -= m <= 2;
    const int64_t era = (y >= 0 ? y : y - 399) / 400;
    const int64_t yoe = y - era * 400;
    const int64_t doy = (153 * (m + (m > 2 ? -3 : 9)) + 2) / 5 + d - 1;
    const int64_t doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    return era * 146097 + doe - 719468;
}

/* Inverse of days_from_civil. */
static inline void civil_from_days(int64_t z, int64_t *y, int *m, int *d)
{
    z += 719468;
    const int64_t era = (z >= 0 ? z : z - 146096) / 146097;
    const int64_t doe = z - era * 146097;
    const int64_t yoe = (doe - doe / 1460 + doe / 36524 - doe / 146096) / 365;
    const int64_t doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    const int64_t mp = (5 * doy + 2) / 153;
    *d = (int)(doy - (153 * mp + 2) / 5 + 1);
    *m = (int)(mp < 10 ? mp + 3 : mp - 9);
    *y = yoe + era * 400 + (*m <= 2);
}

int parser_rfc3339(const char *text, size_t len, int64_t *ts_ns)
{
    const unsigned char *p = (const unsigned char *)text;
    /* Shortest form: YYYY-MM-DDThh:mm:ssZ (20 bytes). */
    if (len < 20)
        return -1;
    const int yh = two_digits(p), yl = two_digits(p + 2);
    if (yh < 0 || yl < 0 || p[4] != '-' || p[7] != '-' || (p[10] != 'T' && p[10] != 't') || p[13] != ':' ||
        p[16] != ':')
        return -1;
    const int year = yh * 100 + yl;
    const int mon = two_digits(p + 5), day = two_digits(p + 8);
    const int hour = two_digits(p + 11), min = two_digits(p + 14), sec = two_digits(p + 17);
    if (year < 1 || mon < 1 || mon > 12 || day < 1 || day > days_in_month(year, mon) || hour < 0 || hour > 23 ||
        min < 0 || min > 59 || sec < 0 || sec > 60)
        return -1;

    size_t i = 19;
    int64_t frac = 0;
    if (p[i] == '.') {
        i++;
        const size_t start = i;
        while (i < len && is_digit(p[i]) && i - start < 10) {
            frac = frac * 10 + (p[i] - '0');
            i++;
        }
        const size_t ndig = i - start;
        if (ndig == 0 || ndig > 9)
            return -1;
        /* 10^(9 - ndig): scales the digits read to nanoseconds. */
        static const int64_t scale[10] = {1000000000, 100000000, 10000000, 1000000, 100000,
                                          10000,      1000,      100,      10,      1};
        frac *= scale[ndig];
        if (i >= len)
            return -1;
    }

    int64_t offset = 0; /* seconds east of UTC */
    if (p[i] == 'Z' || p[i] == 'z') {
        i++;
    } else if (p[i] == '+' || p[i] == '-') {
        if (len - i < 6 || p[i + 3] != ':')
            return -1;
        const int oh = two_digits(p + i + 1), om = two_digits(p + i + 4);
        if (oh < 0 || oh > 23 || om < 0 || om > 59)
            return -1;
        offset = (int64_t)oh * 3600 + om * 60;
        if (p[i] == '-')
            offset = -offset;
        i += 6;
    } else {
        return -1;
    }
    if (i != len)
        return -1;

    int64_t secs = days_from_civil(year, mon, day) * 86400 + hour * 3600 + min * 60 + sec - offset;
    int64_t ns;
    if (secs >= 0) {
        if (__builtin_mul_overflow(secs, NS_PER_SEC, &ns) || __builtin_add_overflow(ns, frac, &ns))
            return -1;
    } else {
        /* (secs + 1) s + (frac - 1 s): reaches INT64_MIN without overflowing. */
        if (__builtin_mul_overflow(secs + 1, NS_PER_SEC, &ns) || __builtin_add_overflow(ns, frac - NS_PER_SEC, &ns))
            return -1;
    }
    *ts_ns = ns;
    return 0;
}

static inline void put2(char *o, int v)
{
    o[0] = (char)('0' + v / 10);
    o[1] = (char)('0' + v % 10);
}

size_t parser_format_rfc3339(int64_t ts_ns, char out[31])
{
    /* Floor division so that instants before 1970 keep a positive fraction. */
    int64_t secs = ts_ns / NS_PER_SEC;
    int64_t ns = ts_ns % NS_PER_SEC;
    if (ns < 0) {
        ns += NS_PER_SEC;
        secs -= 1;
    }
    int64_t days = secs / 86400;
    int64_t sod = secs % 86400;
    if (sod < 0) {
        sod += 86400;
        days -= 1;
    }
    int64_t y;
    int m, d;
    civil_from_days(days, &y, &m, &d);
    /* int64 ns spans years 1677..2262: always four digits. */
    put2(out, (int)(y / 100));
    put2(out + 2, (int)(y % 100));
    out[4] = '-';
    put2(out + 5, m);
    out[7] = '-';
    put2(out + 8, d);
    out[10] = 'T';
    put2(out + 11, (int)(sod / 3600));
    out[13] = ':';
    put2(out + 14, (int)(sod / 60 % 60));
    out[16] = ':';
    put2(out + 17, (int)(sod % 60));
    out[19] = '.';
    for (int k = 28; k >= 20; k--) {
        out[k] = (char)('0' + ns % 10);
        ns /= 10;
    }
    out[29] = 'Z';
    out[30] = '\0';
    return 30;
}
