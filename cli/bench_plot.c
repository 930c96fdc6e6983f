/* anvil bench charts: gnuplot, run as a subprocess, draws each chart as SVG and PNG (pngcairo, else
 * png) from the numbers of summary.json: loss curves, prompt tokens/s vs length, memory and speed vs
 * batch size, standard vs flash attention scaling, quantization size/speed/KL. Without gnuplot the
 * charts are skipped (the caller says so in the report). */
#include "bench.h"
#include <math.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

static const cJSON *at(const cJSON *o, const char *path) {
    char p[256];
    snprintf(p, sizeof p, "%s", path);
    for (char *save = NULL, *t = strtok_r(p, ".", &save); t && o; t = strtok_r(NULL, ".", &save)) o = cJSON_GetObjectItemCaseSensitive(o, t);
    return o;
}

/* A gnuplot datablock "$name << EOD" of (x, y) from the rows of arr (where key == val when key given). */
static int block(FILE *f, const char *name, const cJSON *arr, const char *x, const char *y, const char *key, const char *val) {
    int n = 0;
    const cJSON *r;
    fprintf(f, "$%s << EOD\n", name);
    cJSON_ArrayForEach(r, arr) {
        const cJSON *k = key ? cJSON_GetObjectItemCaseSensitive(r, key) : NULL;
        if (key && !(cJSON_IsString(k) && !strcmp(k->valuestring, val))) continue;
        double a = bench_get(r, x), b = bench_get(r, y);
        if (!isfinite(a) || !isfinite(b)) continue;
        fprintf(f, "%.9g %.9g\n", a, b);
        n++;
    }
    fprintf(f, "EOD\n");
    return n;
}

static const char *k_style =
    "set grid lc rgb '#dddddd'\nset key top right box opaque\nset border lc rgb '#555555'\n"
    "set style line 1 lc rgb '#c0392b' lw 2 pt 7 ps 0.8\nset style line 2 lc rgb '#2980b9' lw 2 pt 5 ps 0.8\n"
    "set style line 3 lc rgb '#e67e22' lw 2 pt 9 ps 0.8 dt 2\nset style line 4 lc rgb '#16a085' lw 2 pt 11 ps 0.8 dt 2\n";

typedef struct {
    const char *dir, *png_term;
    cJSON *list;
    int failed;
} plotter;

/* Runs `body` (datablocks + plot commands) for the SVG and then the PNG, each into a temp file renamed
 * when gnuplot succeeded. */
static void chart(plotter *pl, const char *name, const char *title, const char *body) {
    char svg[4300], png[4300], tsvg[4400], tpng[4400], script[4300], cmd[9000];
    snprintf(svg, sizeof svg, "%s/%s.svg", pl->dir, name);
    snprintf(png, sizeof png, "%s/%s.png", pl->dir, name);
    snprintf(tsvg, sizeof tsvg, "%s.tmp", svg);
    snprintf(tpng, sizeof tpng, "%s.tmp", png);
    snprintf(script, sizeof script, "%s/.%s.gp", pl->dir, name);
    FILE *f = fopen(script, "w");
    if (!f) { pl->failed++; return; }
    fprintf(f, "%s", k_style);
    fprintf(f, "set terminal svg size 820,440 dynamic enhanced font 'Helvetica,12' background rgb 'white'\nset output '%s'\n", tsvg);
    fprintf(f, "set title \"%s\"\n%s\nunset output\n", title, body);
    /* the body again rather than replot: replot does not repeat a multiplot */
    fprintf(f, "reset\n%s", k_style);
    fprintf(f, "set terminal %s size 820,440 font 'Helvetica,10' background rgb 'white'\nset output '%s'\n", pl->png_term, tpng);
    fprintf(f, "set title \"%s\"\n%s\nunset output\n", title, body);
    fclose(f);
    snprintf(cmd, sizeof cmd, "gnuplot '%s' >> '%s/gnuplot.log' 2>&1", script, pl->dir);
    int rc = system(cmd);
    unlink(script);
    if (rc != 0 || rename(tsvg, svg) != 0 || rename(tpng, png) != 0) {
        unlink(tsvg);
        unlink(tpng);
        pl->failed++;
        return;
    }
    cJSON *o = cJSON_CreateObject();
    cJSON_AddStringToObject(o, "name", name);
    cJSON_AddStringToObject(o, "title", title);
    char b[600];
    snprintf(b, sizeof b, "%s.svg", name);
    cJSON_AddStringToObject(o, "svg", b);
    snprintf(b, sizeof b, "%s.png", name);
    cJSON_AddStringToObject(o, "png", b);
    cJSON_AddItemToArray(pl->list, o);
}

cJSON *bench_plot_all(const char *dir, const cJSON *s) {
    if (system("gnuplot --version > /dev/null 2>&1") != 0) return cJSON_CreateString("gnuplot not found (apt-get install gnuplot-nox)");
    plotter pl = {.dir = dir, .png_term = "pngcairo", .list = cJSON_CreateArray()};
    char lp[4300];
    snprintf(lp, sizeof lp, "%s/gnuplot.log", dir);
    unlink(lp);
    if (system("gnuplot -e \"set terminal pngcairo\" > /dev/null 2>&1") != 0) pl.png_term = "png";
    const cJSON *su = at(s, "suites");
    FILE *f;
    size_t len;
    char *b = NULL;

    /* loss curves */
    f = open_memstream(&b, &len);
    int n1 = block(f, "ft", at(su, "finetune.train_curve"), "iter", "loss", NULL, NULL);
    int n2 = block(f, "fv", at(su, "finetune.val_curve"), "iter", "loss", NULL, NULL);
    int n3 = block(f, "et", at(su, "finetune-enhanced.train_curve"), "iter", "loss", NULL, NULL);
    int n4 = block(f, "ev", at(su, "finetune-enhanced.val_curve"), "iter", "loss", NULL, NULL);
    fprintf(f, "set xlabel 'iteration'\nset ylabel 'loss'\nplot ");
    int first = 1;
#define PLOT(cond, spec) if (cond) { fprintf(f, "%s%s", first ? "" : ", ", spec); first = 0; }
    PLOT(n1, "$ft with linespoints ls 1 title 'finetune: train'")
    PLOT(n2, "$fv with linespoints ls 3 title 'finetune: validation'")
    PLOT(n3, "$et with linespoints ls 2 title 'finetune-enhanced: train'")
    PLOT(n4, "$ev with linespoints ls 4 title 'finetune-enhanced: validation'")
    fprintf(f, "\n");
    fclose(f);
    if (!first) chart(&pl, "loss_curves", "LoRA loss curves", b);
    free(b);

    /* prompt tokens/s vs length */
    f = open_memstream(&b, &len);
    first = 1;
    n1 = block(f, "pp", at(su, "comprehensive.inference"), "prompt_tokens", "prompt_tokens_per_sec", NULL, NULL);
    fprintf(f, "set logscale x 2\nset xlabel 'prompt tokens'\nset ylabel 'tokens/s'\nset yrange [0:*]\nplot ");
    PLOT(n1, "$pp with linespoints ls 1 title 'prompt processing'")
    fprintf(f, "\n");
    fclose(f);
    if (!first) chart(&pl, "prompt_speed", "Prompt processing speed vs prompt length", b);
    free(b);

    /* memory and speed vs batch size */
    f = open_memstream(&b, &len);
    first = 1;
    n1 = block(f, "pk", at(su, "comprehensive.batch"), "batch_size", "peak_gb", NULL, NULL);
    n2 = block(f, "ts", at(su, "comprehensive.batch"), "batch_size", "tokens_per_sec", NULL, NULL);
    fprintf(f, "set logscale x 2\nset xlabel 'batch size'\nset ylabel 'process peak memory (GB)'\nset y2label 'generated tokens/s'\n"
               "set ytics nomirror\nset y2tics\nset yrange [0:*]\nset y2range [0:*]\nset key top left\nplot ");
    PLOT(n1, "$pk with linespoints ls 1 axes x1y1 title 'peak memory'")
    PLOT(n2, "$ts with linespoints ls 2 axes x1y2 title 'tokens/s'")
    fprintf(f, "\n");
    fclose(f);
    if (!first) chart(&pl, "batch_memory", "Memory and throughput vs batch size", b);
    free(b);

    /* standard vs flash scaling */
    f = open_memstream(&b, &len);
    first = 1;
    const cJSON *ml = at(su, "attention.model_level"), *kt = at(su, "attention.kernels");
    n1 = block(f, "sp", ml, "T", "prefill_tokens_per_sec", "attention", "standard");
    n2 = block(f, "fp", ml, "T", "prefill_tokens_per_sec", "attention", "flash");
    n3 = block(f, "sd", ml, "T", "decode_tokens_per_sec", "attention", "standard");
    n4 = block(f, "fd", ml, "T", "decode_tokens_per_sec", "attention", "flash");
    fprintf(f, "set logscale x 2\nset xlabel 'tokens (prefill length / decode depth)'\nset ylabel 'prefill tokens/s'\nset y2label 'decode tokens/s'\n"
               "set ytics nomirror\nset y2tics\nset yrange [0:*]\nset y2range [0:*]\nset key bottom left\nplot ");
    PLOT(n1, "$sp with linespoints ls 1 title 'prefill, standard'")
    PLOT(n2, "$fp with linespoints ls 2 title 'prefill, flash'")
    PLOT(n3, "$sd with linespoints ls 3 axes x1y2 title 'decode, standard'")
    PLOT(n4, "$fd with linespoints ls 4 axes x1y2 title 'decode, flash'")
    fprintf(f, "\n");
    fclose(f);
    if (!first) chart(&pl, "attention_scaling", "Standard vs flash attention: model-level scaling", b);
    free(b);

    /* kernel times, when av_attention_time measured some */
    f = open_memstream(&b, &len);
    first = 1;
    cJSON *fwd = cJSON_CreateArray();
    const cJSON *r;
    cJSON_ArrayForEach(r, kt) if (!cJSON_IsTrue(cJSON_GetObjectItem(r, "backward")) && bench_get(r, "B") == 1) cJSON_AddItemReferenceToArray(fwd, (cJSON *)r);
    n1 = block(f, "ks", fwd, "T", "tflops", "attention", "standard");
    n2 = block(f, "kf", fwd, "T", "tflops", "attention", "flash");
    cJSON_Delete(fwd);
    fprintf(f, "set logscale x 2\nset xlabel 'sequence length T (B = 1, forward)'\nset ylabel 'TFLOP/s (causal)'\nset yrange [0:*]\nplot ");
    PLOT(n1, "$ks with linespoints ls 1 title 'standard'")
    PLOT(n2, "$kf with linespoints ls 2 title 'flash'")
    fprintf(f, "\n");
    fclose(f);
    if (!first) chart(&pl, "attention_kernels", "Attention kernels: TFLOP/s vs length", b);
    free(b);

    /* quantization: size, decode speed, KL */
    const cJSON *q = at(su, "comprehensive.quant");
    int nq = 0;
    cJSON_ArrayForEach(r, q) nq += isfinite(bench_get(r, "size_gb")) && isfinite(bench_get(r, "decode_tokens_per_sec"));
    if (nq) {
        f = open_memstream(&b, &len);
        const char *cols[] = {"size_gb", "decode_tokens_per_sec", "kl_mean"}, *labels[] = {"size on disk (GB)", "decode tokens/s", "KL vs bf16 (mean)"};
        for (int c = 0; c < 3; c++) {
            fprintf(f, "$q%d << EOD\n", c);
            int i = 0;
            cJSON_ArrayForEach(r, q) {
                double v = bench_get(r, cols[c]);
                if (isfinite(bench_get(r, "size_gb")) && isfinite(bench_get(r, "decode_tokens_per_sec")))
                    fprintf(f, "%d \"%s\" %.9g\n", i++, cJSON_GetObjectItem(r, "format")->valuestring, isfinite(v) ? v : 0);
            }
            fprintf(f, "EOD\n");
        }
        fprintf(f, "set multiplot layout 1,3 title \"Quantization: size, speed and KL\"\nunset title\nset style fill solid 0.7 border -1\nset boxwidth 0.6\n"
                   "set yrange [0:*]\nset xrange [-0.6:%d.6]\nunset key\n", nq - 1);
        for (int c = 0; c < 3; c++)
            fprintf(f, "set ylabel '%s'\nplot $q%d using 1:3:xtic(2) with boxes lc rgb '%s'\n", labels[c], c, c == 0 ? "#c0392b" : c == 1 ? "#2980b9" : "#16a085");
        fprintf(f, "unset multiplot\n");
        fclose(f);
        chart(&pl, "quantization", "Quantization: size, decode speed, KL", b);
        free(b);
    }
    if (pl.failed && !cJSON_GetArraySize(pl.list)) {
        cJSON_Delete(pl.list);
        return cJSON_CreateString("gnuplot failed (see gnuplot.log)");
    }
    return pl.list;
}
