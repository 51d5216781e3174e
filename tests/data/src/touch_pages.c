/* Touch N pages: malloc N pages, write one byte in each, then read them back.
 * Used to make tests/data/touch_pages.lackey.gz (see tests/data/make_traces.sh).
 * Usage: touch_pages [N]   (default 64) */
#include <stdio.h>
#include <stdlib.h>

#define PAGE 4096

int main(int argc, char **argv)
{
    long n = argc > 1 ? atol(argv[1]) : 64;
    volatile char *buf = malloc((size_t)n * PAGE);
    long i, sum = 0;

    if (!buf)
        return 1;
    for (i = 0; i < n; i++)
        buf[i * PAGE] = (char)i;
    for (i = 0; i < n; i++)
        sum += buf[i * PAGE];
    free((void *)buf);
    return (int)(sum & 1);
}
