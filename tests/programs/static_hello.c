/* Linked statically, so the shim is never loaded into it: the dynamic
 * loader is what honours LD_PRELOAD. It prints something deterministic. */
#include <stdio.h>

int main(int argc, char **argv) {
    printf("static program says %s\n", argc > 1 ? argv[1] : "hello");
    return 0;
}
