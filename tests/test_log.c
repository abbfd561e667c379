/* The library prints nothing unless the program asks for it: the same sequence of
 * calls -- models opened verbose and not, resident and lazy, text generated, a
 * failing open, warnings on the way (an unknown LAZYMOE_CPU_HIDE feature, a
 * popularity history that cannot be saved) -- runs in a child process whose stdout
 * and stderr go to a file, once without a log callback (the file must hold only a
 * marker the child writes itself) and once with one (the callback must receive
 * each expected message, at its level, and stdout/stderr stay as silent). */
#include "harness.h"

#include "common/error.h"
#include "lazymoe.h"

#include <fcntl.h>
#include <sys/wait.h>
#include <unistd.h>

#define DEMO LAZYMOE_SOURCE_DIR "/models/demo-coder"
#define FIXTURE LAZYMOE_SOURCE_DIR "/tests/fixtures/golden/qwen3_moe_f32"
#define MARKER "child done\n"

static FILE *log_file;

static void record(void *ctx, lazymoe_log_level level, const char *msg) {
    (void)ctx;
    static const char tag[] = "EWIP";
    fprintf(log_file, "%c[%s]\n", tag[level], msg);
    fflush(log_file);
}

static int open_model(lazymoe_model **m, const char *dir, int verbose, int capacity) {
    lazymoe_options o;
    lazymoe_options_init(&o);
    o.n_threads = 1;
    o.verbose = verbose;
    o.expert_capacity = capacity;
    char err[LM_ERR_LEN];
    return lazymoe_model_open(m, dir, &o, err, sizeof err);
}

/* The calls under test; returns the number of calls that did not behave as they
 * should (the child's exit status). */
static int call_sequence(void) {
    int bad = 0;
    lazymoe_model *m = NULL;
    lazymoe_session *s = NULL;
    char err[LM_ERR_LEN], *text = NULL;
    /* Resident and verbose: weight-loading progress and the plan; then text. */
    if (open_model(&m, DEMO, 1, 0) != 0) return 100;
    lazymoe_gen_params p;
    lazymoe_gen_params_init(&p, m);
    p.sampling.temperature = 0;
    p.max_tokens = 4;
    if (lazymoe_session_create(&s, m, err, sizeof err) != 0 || lazymoe_generate(s, "def f(", &p, &text, NULL, err, sizeof err) != 0)
        bad++;
    lazymoe_free(text);
    lazymoe_session_free(s);
    lazymoe_model_close(m);
    /* Not verbose: only warnings may be reported. */
    if (open_model(&m, DEMO, 0, 0) != 0) return 101;
    lazymoe_model_close(m);
    /* Lazy experts, verbose: the cache plan and warm start; closing fails to save
     * the popularity history (XDG_CACHE_HOME is not a directory). */
    if (open_model(&m, FIXTURE, 1, 2) != 0) return 102;
    static const int32_t ids[] = {3, 14, 15, 92, 65};
    if (lazymoe_session_create(&s, m, err, sizeof err) != 0 || lazymoe_session_eval(s, ids, 5, NULL, 0, err, sizeof err) != 0)
        bad++;
    lazymoe_session_free(s);
    lazymoe_model_close(m);
    /* A failing open reports through err only. */
    if (open_model(&m, LAZYMOE_SOURCE_DIR "/tests/fixtures/no-such-model", 1, 0) == 0 || m) bad++;
    return bad;
}

/* Runs the sequence in a child with stdout and stderr in out_path, with the
 * callback writing to log_path when that is not NULL. Returns the exit status. */
static int run_child(const char *out_path, const char *log_path) {
    fflush(stdout);
    fflush(stderr);
    pid_t pid = fork();
    if (pid < 0) return -1;
    if (pid == 0) {
        setenv("LAZYMOE_CPU_HIDE", "nonsense", 1);
        setenv("XDG_CACHE_HOME", "/dev/null/not-a-directory", 1);
        int fd = open(out_path, O_WRONLY | O_CREAT | O_TRUNC, 0600);
        if (fd < 0 || dup2(fd, 1) < 0 || dup2(fd, 2) < 0) _exit(120);
        if (log_path) {
            log_file = fopen(log_path, "w");
            if (!log_file) _exit(121);
            lazymoe_set_log(record, NULL);
        }
        int bad = call_sequence();
        fflush(stdout);
        fflush(stderr);
        /* Proves the capture works: this must be all the file holds. */
        if (write(2, MARKER, strlen(MARKER)) != (ssize_t)strlen(MARKER)) _exit(122);
        if (log_file) fclose(log_file);
        _exit(bad);
    }
    int st;
    if (waitpid(pid, &st, 0) != pid) return -1;
    return WIFEXITED(st) ? WEXITSTATUS(st) : 128 + WTERMSIG(st);
}

static char *slurp(const char *path) {
    FILE *f = fopen(path, "rb");
    if (!f) return NULL;
    char *buf = calloc(1, 1 << 20);
    size_t n = buf ? fread(buf, 1, (1 << 20) - 1, f) : 0;
    (void)n;
    fclose(f);
    return buf;
}

static int count(const char *hay, const char *needle) {
    int n = 0;
    for (const char *p = hay; (p = strstr(p, needle)) != NULL; p += strlen(needle)) n++;
    return n;
}

static char dir[] = "/tmp/lazymoe-test-log-XXXXXX";

static void silent_without_callback(void) {
    char out[256];
    snprintf(out, sizeof out, "%s/out-silent", dir);
    int rc = run_child(out, NULL);
    CHECKF(rc == 0, "child exit %d", rc);
    char *o = slurp(out);
    CHECK(o != NULL);
    if (o) CHECKF(!strcmp(o, MARKER), "stdout/stderr held more than the marker: \"%.300s\"", o);
    free(o);
}

static void callback_receives_messages(void) {
    char out[256], log[256];
    snprintf(out, sizeof out, "%s/out-callback", dir);
    snprintf(log, sizeof log, "%s/log", dir);
    int rc = run_child(out, log);
    CHECKF(rc == 0, "child exit %d", rc);
    char *o = slurp(out), *l = slurp(log);
    CHECK(o && l);
    if (!o || !l) {
        free(o);
        free(l);
        return;
    }
    CHECKF(!strcmp(o, MARKER), "stdout/stderr held more than the marker: \"%.300s\"", o);
    /* Progress: terminal text, starting with \r, each series ending at 100% + \n. */
    CHECKF(count(l, "P[\r") >= 2, "progress updates: %d", count(l, "P[\r"));
    CHECK(count(l, "P[") == count(l, "P[\r"));
    CHECKF(count(l, "100%\n]") >= 1, "no finished progress series");
    /* The plan, once per verbose open (the quiet open says nothing). */
    CHECKF(count(l, "I[lazymoe: all experts resident; plan ") == 1, "resident plan lines: %d",
           count(l, "I[lazymoe: all experts resident; plan "));
    CHECK(count(l, "I[lazymoe: expert cache 2 of 8 experts per layer; plan ") == 1);
    /* Warnings, one line each, no newline of their own. */
    CHECK(count(l, "W[lazymoe: LAZYMOE_CPU_HIDE: unknown feature 'nonsense' ignored") == 1);
    CHECK(count(l, "W[lazymoe: could not save expert popularity: ") == 1);
    CHECKF(count(l, "\n]") == count(l, "100%\n]"), "a non-progress message ends with a newline");
    free(o);
    free(l);
}

int main(void) {
    if (!mkdtemp(dir)) {
        printf("FAIL setup: mkdtemp\n");
        return 1;
    }
    TEST_CASE("library_silent_without_log_callback", silent_without_callback);
    TEST_CASE("log_callback_receives_warnings_progress_and_plan", callback_receives_messages);
    char cmd[512];
    snprintf(cmd, sizeof cmd, "rm -rf '%s'", dir);
    if (system(cmd) != 0) printf("# could not remove %s\n", dir);
    TEST_EXIT();
}
