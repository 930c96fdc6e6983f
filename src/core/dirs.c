/* Output directories that appear only when complete: commands build them in a temp directory
 * beside the destination and publish it at the end, or remove it on failure. */
#include "core/memory.h"
#include <dirent.h>
#include <errno.h>
#include <stdio.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

void av_remove_tree(const char *dir) {
    DIR *d = opendir(dir);
    if (d) {
        struct dirent *e;
        char p[4400];
        while ((e = readdir(d)))
            if (strcmp(e->d_name, ".") && strcmp(e->d_name, "..")) unlink(av_path_join(p, sizeof p, dir, e->d_name));
        closedir(d);
    }
    rmdir(dir);
}

av_status av_dir_publish(const char *tmp, const char *dir) {
    struct stat sb;
    if (stat(dir, &sb) != 0) {
        if (rename(tmp, dir) != 0) return av_fail(AV_ERR_IO, "%s: cannot rename the finished output into place: %s", dir, strerror(errno));
        return AV_OK;
    }
    if (!S_ISDIR(sb.st_mode)) return av_fail(AV_ERR_IO, "%s: exists and is not a directory", dir);
    /* an existing directory (written over, as before): each file replaces its namesake atomically */
    DIR *d = opendir(tmp);
    if (!d) return av_fail(AV_ERR_IO, "%s: cannot read directory", tmp);
    av_status st = AV_OK;
    struct dirent *e;
    char a[4400], b[4400];
    while (st == AV_OK && (e = readdir(d))) {
        if (!strcmp(e->d_name, ".") || !strcmp(e->d_name, "..")) continue;
        if (rename(av_path_join(a, sizeof a, tmp, e->d_name), av_path_join(b, sizeof b, dir, e->d_name)) != 0)
            st = av_fail(AV_ERR_IO, "%s: cannot move into place: %s", b, strerror(errno));
    }
    closedir(d);
    av_remove_tree(tmp);
    return st;
}
