/* Classify uint8 HWC images: `addernet [-l] [-i] [FILE]` reads whole images from FILE (or standard input) and
 * prints one class index per line; -l adds the logits as the hex bits of their float32 values (for exact
 * checks); -i prints which sum-of-absolute-differences code was compiled, first. */
#include <stdio.h>
#include <string.h>

#include "addernet.h"
#include "model.h"

#ifdef ADDERNET_SEMIHOSTING
extern void initialise_monitor_handles(void);
#endif

static uint8_t image[ADDERNET_IMAGE_BYTES];

int main(int argc, char **argv) {
    int with_logits = 0;
    const char *path = NULL;
#ifdef ADDERNET_SEMIHOSTING
    initialise_monitor_handles();
#endif
    for (int i = 1; i < argc; i++) {
        if (strcmp(argv[i], "-l") == 0) {
            with_logits = 1;
        } else if (strcmp(argv[i], "-i") == 0) {
            printf("sad: %s\n", an_isa());
        } else if (argv[i][0] == '-' || path) {
            fprintf(stderr, "error: unknown argument %s: usage: addernet [-l] [-i] [FILE of uint8 HWC images]\n",
                    argv[i]);
            return 2;
        } else {
            path = argv[i];
        }
    }
    FILE *in = path ? fopen(path, "rb") : stdin;
    if (!in) {
        fprintf(stderr, "error: cannot open %s: pass a file of %dx%dx%d uint8 HWC images\n", path,
                ADDERNET_IN_H, ADDERNET_IN_W, ADDERNET_IN_C);
        return 2;
    }
    float logits[ADDERNET_CLASSES];
    for (;;) {
        size_t got = fread(image, 1, sizeof image, in);
        if (got == 0 && ferror(in)) {
            fprintf(stderr, "error: cannot read %s: pass a file of %dx%dx%d uint8 HWC images\n",
                    path ? path : "standard input", ADDERNET_IN_H, ADDERNET_IN_W, ADDERNET_IN_C);
            return 2;
        }
        if (got == 0) break;
        if (got != sizeof image) {
            fprintf(stderr, "error: the input ends inside an image (%lu of %lu bytes): it must hold whole %dx%dx%d "
                    "uint8 HWC images\n", (unsigned long)got, (unsigned long)sizeof image, ADDERNET_IN_H,
                    ADDERNET_IN_W, ADDERNET_IN_C);
            return 2;
        }
        an_run(&addernet_model, image, logits);
        printf("%d", an_argmax(logits, ADDERNET_CLASSES));
        for (int k = 0; with_logits && k < ADDERNET_CLASSES; k++) {
            uint32_t bits;
            memcpy(&bits, &logits[k], sizeof bits);
            printf(" %08lx", (unsigned long)bits);
        }
        printf("\n");
    }
    if (fflush(stdout) != 0 || ferror(stdout)) {
        fprintf(stderr, "error: cannot write the classes to standard output\n");
        return 2;
    }
    return 0;
}
