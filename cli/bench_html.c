/* anvil bench: report.html from report.md's text (the Markdown subset the report writer emits:
 * headings, tables, bullets, paragraphs, **bold**, `code`), self-contained: charts are inlined as
 * SVG (their PNG as base64 when the SVG is missing), no network needed. */
#include "bench.h"
#include <stdlib.h>
#include <string.h>

static void esc(FILE *f, const char *s, size_t n) {
    int bold = 0, code = 0;
    for (size_t i = 0; i < n; i++) {
        char c = s[i];
        if (c == '*' && i + 1 < n && s[i + 1] == '*' && !code) { fputs(bold ? "</b>" : "<b>", f); bold = !bold; i++; continue; }
        if (c == '`') { fputs(code ? "</code>" : "<code>", f); code = !code; continue; }
        if (c == '<') fputs("&lt;", f);
        else if (c == '>') fputs("&gt;", f);
        else if (c == '&') fputs("&amp;", f);
        else fputc(c, f);
    }
    if (bold) fputs("</b>", f);
    if (code) fputs("</code>", f);
}

static void b64(FILE *f, const unsigned char *d, size_t n) {
    static const char t[] = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    for (size_t i = 0; i < n; i += 3) {
        unsigned v = (unsigned)d[i] << 16 | (i + 1 < n ? (unsigned)d[i + 1] << 8 : 0) | (i + 2 < n ? d[i + 2] : 0);
        fputc(t[v >> 18 & 63], f);
        fputc(t[v >> 12 & 63], f);
        fputc(i + 1 < n ? t[v >> 6 & 63] : '=', f);
        fputc(i + 2 < n ? t[v & 63] : '=', f);
    }
}

/* ![title](file.svg): the SVG inline (without its XML prolog), else the PNG beside it as base64. */
static void image(FILE *f, const char *dir, const char *line, size_t n) {
    const char *a = memchr(line, '(', n), *e = line + n;
    char name[512], p[4300], title[256];
    const char *tb = line + 2, *te = memchr(line, ']', n);
    snprintf(title, sizeof title, "%.*s", te ? (int)(te - tb) : 0, tb);
    snprintf(name, sizeof name, "%.*s", a ? (int)(e - a - 2) : 0, a ? a + 1 : "");
    char *buf = NULL;
    size_t len = 0;
    fprintf(f, "<figure>");
    if (av_file_read(av_path_join(p, sizeof p, dir, name), &buf, &len) == AV_OK) {
        char *svg = strstr(buf, "<svg");
        fputs(svg ? svg : buf, f);
    } else {
        size_t l = strlen(name);
        if (l > 4) strcpy(name + l - 4, ".png");
        if (av_file_read(av_path_join(p, sizeof p, dir, name), &buf, &len) == AV_OK) {
            fputs("<img alt=\"chart\" src=\"data:image/png;base64,", f);
            b64(f, (const unsigned char *)buf, len);
            fputs("\">", f);
        } else fprintf(f, "<p>(chart %s missing)</p>", name);
    }
    free(buf);
    fprintf(f, "<figcaption>");
    esc(f, title, strlen(title));
    fprintf(f, "</figcaption></figure>\n");
}

static void row(FILE *f, const char *s, size_t n, int head) {
    const char *p = s + 1, *e = s + n;
    while (e > p && (e[-1] == ' ' || e[-1] == '|')) e--;
    fputs("<tr>", f);
    while (p < e) {
        const char *q = p;
        while (q < e && *q != '|') q++;
        const char *a = p, *b = q;
        while (a < b && *a == ' ') a++;
        while (b > a && b[-1] == ' ') b--;
        int num = b > a && (((*a >= '0' && *a <= '9') || *a == '-' || *a == '+') && !head);
        fprintf(f, head ? "<th>" : num ? "<td class=n>" : "<td>");
        esc(f, a, (size_t)(b - a));
        fputs(head ? "</th>" : "</td>", f);
        p = q < e ? q + 1 : q;
    }
    fputs("</tr>\n", f);
}

int bench_html_write(const char *path, const cJSON *summary, const cJSON *charts, const char *md) {
    (void)charts;
    char dir[4200];
    snprintf(dir, sizeof dir, "%s", path);
    char *sl = strrchr(dir, '/');
    if (sl) *sl = 0;
    else strcpy(dir, ".");
    char *html = NULL;
    size_t hl = 0;
    FILE *f = open_memstream(&html, &hl);
    if (!f) return -1;
    const cJSON *ok = cJSON_GetObjectItem(cJSON_GetObjectItem(summary, "run"), "success_rate");
    fprintf(f, "<!DOCTYPE html>\n<html lang=en><head><meta charset=utf-8><title>anvil benchmark report</title>\n<style>\n"
               "body{font-family:system-ui,-apple-system,'Segoe UI',sans-serif;max-width:1100px;margin:2em auto;padding:0 1em;color:#222;line-height:1.45}\n"
               "h1{border-bottom:3px solid #c0392b;padding-bottom:.2em}h2{border-bottom:1px solid #ddd;margin-top:1.8em}\n"
               "table{border-collapse:collapse;margin:.8em 0;font-size:.92em}th,td{border:1px solid #ccc;padding:.3em .6em;text-align:left}"
               "th{background:#f3f3f3}td.n{text-align:right;font-variant-numeric:tabular-nums}tr:nth-child(even) td{background:#fafafa}\n"
               "code{background:#f4f4f4;padding:0 .25em;border-radius:3px}figure{margin:1em 0;border:1px solid #eee;padding:.5em}"
               "figure svg,figure img{max-width:100%%;height:auto}figcaption{color:#555;font-size:.9em}\n"
               ".badge{display:inline-block;padding:.2em .6em;border-radius:1em;color:#fff;background:%s}\n</style></head><body>\n",
            cJSON_IsNumber(ok) && ok->valuedouble >= 1 ? "#27ae60" : "#c0392b");
    const char *p = md;
    int in_table = 0, in_list = 0, table_row = 0;
    while (*p) {
        const char *e = strchr(p, '\n');
        size_t n = e ? (size_t)(e - p) : strlen(p);
        int is_row = n && p[0] == '|', is_item = n > 1 && p[0] == '-' && p[1] == ' ';
        if (in_table && !is_row) { fputs("</table>\n", f); in_table = 0; }
        if (in_list && !is_item) { fputs("</ul>\n", f); in_list = 0; }
        if (is_row) {
            if (!in_table) { fputs("<table>\n", f); in_table = 1; table_row = 0; }
            if (table_row == 1 && strspn(p, "|-: ") >= n) { table_row++; goto next; }
            row(f, p, n, table_row == 0);
            table_row++;
        } else if (is_item) {
            if (!in_list) { fputs("<ul>\n", f); in_list = 1; }
            fputs("<li>", f);
            esc(f, p + 2, n - 2);
            fputs("</li>\n", f);
        } else if (n > 2 && !strncmp(p, "![", 2)) {
            image(f, dir, p, n);
        } else if (n && p[0] == '#' && strspn(p, "#") < n && strspn(p, "#") <= 6) {
            int h = (int)strspn(p, "#");
            fprintf(f, "<h%d id=\"", h); /* an anchor: the heading's words, lower-case, joined by '-' */
            for (size_t i = (size_t)h + 1, dash = 0; i < n; i++) {
                char c = p[i];
                if ((c >= 'a' && c <= 'z') || (c >= '0' && c <= '9')) { if (dash) fputc('-', f); fputc(c, f); dash = 0; }
                else if (c >= 'A' && c <= 'Z') { if (dash) fputc('-', f); fputc(c - 'A' + 'a', f); dash = 0; }
                else dash = i > (size_t)h + 1;
            }
            fprintf(f, "\">");
            esc(f, p + h + 1, n - (size_t)h - 1);
            if (h == 2 && n >= 20 && !strncmp(p, "## Executive summary", 20) && cJSON_IsNumber(ok))
                fprintf(f, " <span class=badge>%.0f%% of suites ok</span>", 100 * ok->valuedouble);
            fprintf(f, "</h%d>\n", h);
        } else if (n) {
            fputs("<p>", f);
            esc(f, p, n);
            fputs("</p>\n", f);
        }
    next:
        p += n + (e ? 1 : 0);
    }
    if (in_table) fputs("</table>\n", f);
    if (in_list) fputs("</ul>\n", f);
    fputs("</body></html>\n", f);
    fclose(f);
    av_status st = av_write_file_atomic(path, html, hl);
    free(html);
    return st == AV_OK ? 0 : -1;
}
