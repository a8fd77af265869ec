/* chat.c: a multi-turn chat on qwen-rt's C ABI (include/qwen.h).
 * Build: cargo build --release --lib
 *        cc -I include examples/chat.c -L target/release -lqwen_rt -lpthread -ldl -lm -o chat
 * Run:   LD_LIBRARY_PATH=target/release ./chat [MODEL_DIR | :tiny:] [MAX_NEW_TOKENS]
 * Type a message per line; /reset forgets the conversation, /exit (or end of input) quits.
 * Answers stream to stdout; prompts and errors go to stderr. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include "qwen.h"

static int print_piece(const char *piece, void *user_data) {
    (void)user_data;
    fputs(piece, stdout);
    fflush(stdout);
    return 1; /* non-zero: keep going */
}

static int report(const char *what, qwen_status st) {
    fprintf(stderr, "%s: %s: %s\n", what, qwen_status_name(st), qwen_last_error());
    return 1;
}

int main(int argc, char **argv) {
    const char *path = argc > 1 ? argv[1] : QWEN_TINY_MODEL;
    qwen_model *model = NULL;
    qwen_status st = qwen_model_load(path, NULL, &model);
    if (st != QWEN_OK) return report("qwen_model_load", st);

    qwen_session_options opts;
    if ((st = qwen_session_options_default(model, &opts)) != QWEN_OK) return report("options", st);
    if (argc > 2) opts.max_new_tokens = (uint32_t)strtoul(argv[2], NULL, 10);
    qwen_session *session = NULL;
    st = qwen_session_create(model, &opts, &session);
    qwen_model_free(model); /* the session keeps the model alive */
    if (st != QWEN_OK) return report("qwen_session_create", st);

    fprintf(stderr, "qwen-rt %s. /reset, /exit\n", qwen_version());
    char line[8192];
    int rc = 0;
    while (fputs("you> ", stderr), fgets(line, sizeof line, stdin) != NULL) {
        line[strcspn(line, "\r\n")] = '\0';
        if (strcmp(line, "/exit") == 0) break;
        if (strcmp(line, "/reset") == 0) {
            st = qwen_session_reset(session);
            if (st != QWEN_OK) { rc = report("qwen_session_reset", st); break; }
            puts("(conversation reset)");
            continue;
        }
        if (line[0] == '\0') continue;
        qwen_finish finish = QWEN_FINISH_STOP;
        fputs("qwen> ", stdout);
        st = qwen_session_send(session, line, print_piece, NULL, NULL, &finish);
        putchar('\n');
        if (st == QWEN_ERR_CONTEXT_FULL) { report("message too long", st); continue; }
        if (st != QWEN_OK) { rc = report("qwen_session_send", st); break; }
        if (finish == QWEN_FINISH_CONTEXT_FULL) fputs("(context full: /reset)\n", stderr);
    }
    qwen_session_free(session);
    return rc;
}
