/* Hand scanners for the splitting regexes of llama.cpp's pre-tokenizer names that are neither GPT-2's
 * nor Llama-3's: "default" ([\p{P}$+<=>^~|]+, then GPT-2's, \p{N}+, [0-9]{3}) and "deepseek-llm"
 * ([\r\n], \s?<cased letters>+, \s?<ASCII/full-width punctuation>+, \s+$, <CJK/Hangul>+, \p{N}+).
 * Like llama.cpp, a non-ASCII whitespace character never belongs to a bracketed class. */
#include "tokenizer/tok_internal.h"
#include <stdio.h>
#include <string.h>

/* Unicode 14.0 general category P* (generated once with Python's unicodedata) */
static const uint32_t punct[][2] = {
    {0x21,0x23}, {0x25,0x2A}, {0x2C,0x2F}, {0x3A,0x3B}, {0x3F,0x40}, {0x5B,0x5D}, {0x5F,0x5F},
    {0x7B,0x7B}, {0x7D,0x7D}, {0xA1,0xA1}, {0xA7,0xA7}, {0xAB,0xAB}, {0xB6,0xB7}, {0xBB,0xBB},
    {0xBF,0xBF}, {0x37E,0x37E}, {0x387,0x387}, {0x55A,0x55F}, {0x589,0x58A}, {0x5BE,0x5BE},
    {0x5C0,0x5C0}, {0x5C3,0x5C3}, {0x5C6,0x5C6}, {0x5F3,0x5F4}, {0x609,0x60A}, {0x60C,0x60D},
    {0x61B,0x61B}, {0x61D,0x61F}, {0x66A,0x66D}, {0x6D4,0x6D4}, {0x700,0x70D}, {0x7F7,0x7F9},
    {0x830,0x83E}, {0x85E,0x85E}, {0x964,0x965}, {0x970,0x970}, {0x9FD,0x9FD}, {0xA76,0xA76},
    {0xAF0,0xAF0}, {0xC77,0xC77}, {0xC84,0xC84}, {0xDF4,0xDF4}, {0xE4F,0xE4F}, {0xE5A,0xE5B},
    {0xF04,0xF12}, {0xF14,0xF14}, {0xF3A,0xF3D}, {0xF85,0xF85}, {0xFD0,0xFD4}, {0xFD9,0xFDA},
    {0x104A,0x104F}, {0x10FB,0x10FB}, {0x1360,0x1368}, {0x1400,0x1400}, {0x166E,0x166E},
    {0x169B,0x169C}, {0x16EB,0x16ED}, {0x1735,0x1736}, {0x17D4,0x17D6}, {0x17D8,0x17DA},
    {0x1800,0x180A}, {0x1944,0x1945}, {0x1A1E,0x1A1F}, {0x1AA0,0x1AA6}, {0x1AA8,0x1AAD},
    {0x1B5A,0x1B60}, {0x1B7D,0x1B7E}, {0x1BFC,0x1BFF}, {0x1C3B,0x1C3F}, {0x1C7E,0x1C7F},
    {0x1CC0,0x1CC7}, {0x1CD3,0x1CD3}, {0x2010,0x2027}, {0x2030,0x2043}, {0x2045,0x2051},
    {0x2053,0x205E}, {0x207D,0x207E}, {0x208D,0x208E}, {0x2308,0x230B}, {0x2329,0x232A},
    {0x2768,0x2775}, {0x27C5,0x27C6}, {0x27E6,0x27EF}, {0x2983,0x2998}, {0x29D8,0x29DB},
    {0x29FC,0x29FD}, {0x2CF9,0x2CFC}, {0x2CFE,0x2CFF}, {0x2D70,0x2D70}, {0x2E00,0x2E2E},
    {0x2E30,0x2E4F}, {0x2E52,0x2E5D}, {0x3001,0x3003}, {0x3008,0x3011}, {0x3014,0x301F},
    {0x3030,0x3030}, {0x303D,0x303D}, {0x30A0,0x30A0}, {0x30FB,0x30FB}, {0xA4FE,0xA4FF},
    {0xA60D,0xA60F}, {0xA673,0xA673}, {0xA67E,0xA67E}, {0xA6F2,0xA6F7}, {0xA874,0xA877},
    {0xA8CE,0xA8CF}, {0xA8F8,0xA8FA}, {0xA8FC,0xA8FC}, {0xA92E,0xA92F}, {0xA95F,0xA95F},
    {0xA9C1,0xA9CD}, {0xA9DE,0xA9DF}, {0xAA5C,0xAA5F}, {0xAADE,0xAADF}, {0xAAF0,0xAAF1},
    {0xABEB,0xABEB}, {0xFD3E,0xFD3F}, {0xFE10,0xFE19}, {0xFE30,0xFE52}, {0xFE54,0xFE61},
    {0xFE63,0xFE63}, {0xFE68,0xFE68}, {0xFE6A,0xFE6B}, {0xFF01,0xFF03}, {0xFF05,0xFF0A},
    {0xFF0C,0xFF0F}, {0xFF1A,0xFF1B}, {0xFF1F,0xFF20}, {0xFF3B,0xFF3D}, {0xFF3F,0xFF3F},
    {0xFF5B,0xFF5B}, {0xFF5D,0xFF5D}, {0xFF5F,0xFF65}, {0x10100,0x10102}, {0x1039F,0x1039F},
    {0x103D0,0x103D0}, {0x1056F,0x1056F}, {0x10857,0x10857}, {0x1091F,0x1091F}, {0x1093F,0x1093F},
    {0x10A50,0x10A58}, {0x10A7F,0x10A7F}, {0x10AF0,0x10AF6}, {0x10B39,0x10B3F}, {0x10B99,0x10B9C},
    {0x10EAD,0x10EAD}, {0x10F55,0x10F59}, {0x10F86,0x10F89}, {0x11047,0x1104D}, {0x110BB,0x110BC},
    {0x110BE,0x110C1}, {0x11140,0x11143}, {0x11174,0x11175}, {0x111C5,0x111C8}, {0x111CD,0x111CD},
    {0x111DB,0x111DB}, {0x111DD,0x111DF}, {0x11238,0x1123D}, {0x112A9,0x112A9}, {0x1144B,0x1144F},
    {0x1145A,0x1145B}, {0x1145D,0x1145D}, {0x114C6,0x114C6}, {0x115C1,0x115D7}, {0x11641,0x11643},
    {0x11660,0x1166C}, {0x116B9,0x116B9}, {0x1173C,0x1173E}, {0x1183B,0x1183B}, {0x11944,0x11946},
    {0x119E2,0x119E2}, {0x11A3F,0x11A46}, {0x11A9A,0x11A9C}, {0x11A9E,0x11AA2}, {0x11C41,0x11C45},
    {0x11C70,0x11C71}, {0x11EF7,0x11EF8}, {0x11FFF,0x11FFF}, {0x12470,0x12474}, {0x12FF1,0x12FF2},
    {0x16A6E,0x16A6F}, {0x16AF5,0x16AF5}, {0x16B37,0x16B3B}, {0x16B44,0x16B44}, {0x16E97,0x16E9A},
    {0x16FE2,0x16FE2}, {0x1BC9F,0x1BC9F}, {0x1DA87,0x1DA8B}, {0x1E95E,0x1E95F}
};
/* the letter class of DeepSeek-LLM's tokenizer (its tokenizer.json Split regex): cased letters */
static const uint32_t ds_letters[][2] = {
    {0x41,0x5A}, {0x61,0x7A}, {0xB5,0xB5}, {0xC0,0xD6}, {0xD8,0xF6}, {0xF8,0x1BA}, {0x1BC,0x1BF}, {0x1C4,0x293},
    {0x295,0x2AF}, {0x370,0x373}, {0x376,0x377}, {0x37B,0x37D}, {0x37F,0x37F}, {0x386,0x386}, {0x388,0x38A},
    {0x38C,0x38C}, {0x38E,0x3A1}, {0x3A3,0x3F5}, {0x3F7,0x481}, {0x48A,0x52F}, {0x531,0x556}, {0x10A0,0x10C5},
    {0x13A0,0x13F5}, {0x13F8,0x13FD}, {0x1C90,0x1CBA}, {0x1CBD,0x1CBF}, {0x1D00,0x1D2B}, {0x1D6B,0x1D77},
    {0x1D79,0x1D9A}, {0x1E00,0x1F15}, {0x1F18,0x1F1D}, {0x1F20,0x1F45}, {0x1F48,0x1F4D}, {0x1F50,0x1F57},
    {0x1F59,0x1F59}, {0x1F5B,0x1F5B}, {0x1F5D,0x1F5D}, {0x1F5F,0x1F7D}, {0x1F80,0x1FB4}, {0x1FB6,0x1FBC},
    {0x1FBE,0x1FBE}, {0x1FC2,0x1FC4}, {0x1FC6,0x1FCC}, {0x1FD0,0x1FD3}, {0x1FD6,0x1FDB}, {0x1FE0,0x1FEC},
    {0x1FF2,0x1FF4}, {0x1FF6,0x1FFC}, {0x2102,0x2102}, {0x2107,0x2107}, {0x210A,0x2113}, {0x2115,0x2115},
    {0x2119,0x211D}, {0x2124,0x2124}, {0x2126,0x2126}, {0x2128,0x2128}, {0x212A,0x212D}, {0x212F,0x2134},
    {0x2139,0x2139}, {0x213C,0x213F}, {0x2145,0x2149}, {0x214E,0x214E}, {0x2183,0x2184}, {0x2C00,0x2C7B},
    {0x2C7E,0x2CE4}, {0x2CEB,0x2CEE}, {0x2CF2,0x2CF3}, {0xA640,0xA66D}, {0xA680,0xA69B}, {0xA722,0xA76F},
    {0xA771,0xA787}, {0xA78B,0xA78E}, {0xAB70,0xABBF}, {0xFB00,0xFB06}, {0xFB13,0xFB17}, {0xFF21,0xFF3A},
    {0xFF41,0xFF5A}, {0x10400,0x1044F}, {0x104B0,0x104D3}, {0x104D8,0x104FB}, {0x10C80,0x10CB2},
    {0x10CC0,0x10CF2}, {0x118A0,0x118DF}, {0x1E900,0x1E943},
};
/* its punctuation class: ASCII !-/ and :-~, full-width !-/ and :-~, quotation marks, CJK 3000-3002 */
static const uint32_t ds_punct[][2] = {{0x21,0x2F}, {0x3A,0x7E}, {0x2018,0x201F}, {0x3000,0x3002}, {0xFF01,0xFF0F}, {0xFF1A,0xFF5E}};
/* its CJK class: U+0800-U+9FA5 and Hangul U+AC00-U+D7FF */
static const uint32_t ds_cjk[][2] = {{0x800,0x9FA5}, {0xAC00,0xD7FF}};

#define IN(tab, cp) tk_in_ranges(tab, (int)(sizeof tab / sizeof tab[0]), cp)

int tk_is_punct(uint32_t cp) { return IN(punct, cp); }

static int cls(int kind, uint32_t c) {
    if (c > 0x7F && tk_is_space(c)) return 0;
    switch (kind) {
    case TK_RX_PUNCT_RUN: return c == '$' || c == '+' || c == '<' || c == '=' || c == '>' || c == '^' || c == '~' || c == '|' || tk_is_punct(c);
    case TK_RX_SP_LETTERS: return IN(ds_letters, c);
    case TK_RX_SP_PUNCT: return IN(ds_punct, c);
    case TK_RX_CJK: return IN(ds_cjk, c);
    default: return 0;
    }
}

static size_t class_run(int kind, const char *s, size_t n, size_t i) {
    while (i < n) {
        uint32_t c;
        int l = tk_utf8_next(s, n, i, &c);
        if (!cls(kind, c)) break;
        i += (size_t)l;
    }
    return i;
}

size_t tk_rx_trailing_space(const char *s, size_t n) {
    size_t t = n;
    for (size_t i = 0; i < n;) {
        uint32_t c;
        int l = tk_utf8_next(s, n, i, &c);
        if (!tk_is_space(c)) t = n;
        else if (t == n) t = i;
        i += (size_t)l;
    }
    return t;
}

size_t tk_rx_match(int kind, const char *s, size_t n, size_t i) {
    uint32_t c, d;
    int l = tk_utf8_next(s, n, i, &c);
    switch (kind) {
    case TK_RX_DIGIT3:
        return i + 3 <= n && s[i] >= '0' && s[i] <= '9' && s[i + 1] >= '0' && s[i + 1] <= '9' && s[i + 2] >= '0' && s[i + 2] <= '9' ? i + 3 : 0;
    case TK_RX_CRLF: return c == '\r' || c == '\n' ? i + 1 : 0;
    case TK_RX_SP_LETTERS:
    case TK_RX_SP_PUNCT: /* \s?X+ */
        if (tk_is_space(c) && i + (size_t)l < n) {
            tk_utf8_next(s, n, i + (size_t)l, &d);
            if (cls(kind, d)) return class_run(kind, s, n, i + (size_t)l);
        }
        /* fall through */
    case TK_RX_PUNCT_RUN:
    case TK_RX_CJK: {
        size_t e = class_run(kind, s, n, i);
        return e > i ? e : 0;
    }
    default: return 0;
    }
}

/* ---- the regexes as tokenizer.json spells them ------------------------------------------------ */
/* Recognizes the GPT-2 and Llama-3 style split regexes (the latter with any digit-group size). */
static int known_regex(const char *rx, int *digits) {
    static const char gpt2[] = "'s|'t|'re|'ve|'m|'ll|'d| ?\\p{L}+| ?\\p{N}+| ?[^\\s\\p{L}\\p{N}]+|\\s+(?!\\S)|\\s+";
    static const char l3a[] = "(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\\r\\n\\p{L}\\p{N}]?\\p{L}+|";
    static const char l3b[] = "| ?[^\\s\\p{L}\\p{N}]+[\\r\\n]*|\\s*[\\r\\n]+|\\s+(?!\\S)|\\s+";
    if (!strcmp(rx, gpt2)) { *digits = 0; return TK_RX_GPT2; }
    size_t n = strlen(rx), na = strlen(l3a), nb = strlen(l3b);
    if (n < na + nb || memcmp(rx, l3a, na) || strcmp(rx + n - nb, l3b)) return TK_RX_NONE;
    char mid[64];
    size_t nm = n - na - nb;
    if (nm >= sizeof mid) return TK_RX_NONE;
    memcpy(mid, rx + na, nm);
    mid[nm] = 0;
    int k;
    char tail;
    if (!strcmp(mid, "\\p{N}")) *digits = 1;
    else if (!strcmp(mid, "\\p{N}+")) *digits = 0;
    else if (sscanf(mid, "\\p{N}{1,%d%c", &k, &tail) == 2 && tail == '}' && k > 0) *digits = k;
    else return TK_RX_NONE;
    return TK_RX_LLAMA3;
}


/* appends "a" or "a-b" for each range of a class, as UTF-8 */
static size_t put_class(char *b, size_t at, size_t cap, const uint32_t (*r)[2], int n) {
    for (int i = 0; i < n; i++) {
        char u[4];
        if (at + 12 >= cap) return cap;
        at += (size_t)tk_utf8_put(r[i][0], b + at);
        if (r[i][1] > r[i][0]) {
            b[at++] = '-';
            int l = tk_utf8_put(r[i][1], u);
            memcpy(b + at, u, (size_t)l);
            at += (size_t)l;
        }
    }
    return at;
}

const char *tk_rx_string(int kind, int digits, char *buf, size_t cap) {
    static const char gpt2[] = "'s|'t|'re|'ve|'m|'ll|'d| ?\\p{L}+| ?\\p{N}+| ?[^\\s\\p{L}\\p{N}]+|\\s+(?!\\S)|\\s+";
    const uint32_t (*r)[2] = NULL;
    int n = 0;
    const char *pre = "";
    switch (kind) {
    case TK_RX_GPT2: snprintf(buf, cap, "%s", gpt2); return buf;
    case TK_RX_LLAMA3:
        if (digits == 1) snprintf(buf, cap, "(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\\r\\n\\p{L}\\p{N}]?\\p{L}+|\\p{N}| ?[^\\s\\p{L}\\p{N}]+[\\r\\n]*|\\s*[\\r\\n]+|\\s+(?!\\S)|\\s+");
        else if (digits > 1) snprintf(buf, cap, "(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\\r\\n\\p{L}\\p{N}]?\\p{L}+|\\p{N}{1,%d}| ?[^\\s\\p{L}\\p{N}]+[\\r\\n]*|\\s*[\\r\\n]+|\\s+(?!\\S)|\\s+", digits);
        else snprintf(buf, cap, "(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\\r\\n\\p{L}\\p{N}]?\\p{L}+|\\p{N}+| ?[^\\s\\p{L}\\p{N}]+[\\r\\n]*|\\s*[\\r\\n]+|\\s+(?!\\S)|\\s+");
        return buf;
    case TK_RX_PUNCT_RUN: snprintf(buf, cap, "[\\p{P}\\$\\+<=>\\^~\\|]+"); return buf;
    case TK_RX_DIGIT3: snprintf(buf, cap, "[0-9][0-9][0-9]"); return buf;
    case TK_RX_CRLF: snprintf(buf, cap, "[\r\n]"); return buf;
    case TK_RX_TRAIL_SPACE: snprintf(buf, cap, "\\s+$"); return buf;
    case TK_RX_SP_LETTERS: r = ds_letters; n = (int)(sizeof ds_letters / sizeof *ds_letters); pre = "\\s?["; break;
    case TK_RX_SP_PUNCT: r = ds_punct; n = (int)(sizeof ds_punct / sizeof *ds_punct); pre = "\\s?["; break;
    case TK_RX_CJK: r = ds_cjk; n = (int)(sizeof ds_cjk / sizeof *ds_cjk); pre = "["; break;
    default: return NULL;
    }
    size_t at = (size_t)snprintf(buf, cap, "%s", pre);
    at = put_class(buf, at, cap, r, n);
    if (at + 3 >= cap) return NULL;
    memcpy(buf + at, "]+", 3);
    return buf;
}

int tk_rx_parse(const char *rx, int *digits) {
    int k = known_regex(rx, digits);
    if (k != TK_RX_NONE) return k;
    char buf[2048];
    for (k = TK_RX_PUNCT_RUN; k <= TK_RX_CJK; k++) {
        const char *s = tk_rx_string(k, 0, buf, sizeof buf);
        if (s && !strcmp(s, rx)) { *digits = 0; return k; }
    }
    return TK_RX_NONE;
}
