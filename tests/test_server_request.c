/* Request -> prompt conversion of the server (src/server/request.c).
 *
 * The reference: conversations of tests/fixtures/templates/corpus.jsonl rendered by
 * Python jinja2 the way transformers renders them, with the real Qwen3-Coder template
 * (tests/fixtures/templates/expected/qwen3-coder.jsonl). The same conversation sent as
 * an OpenAI request and as an Anthropic request must render to exactly that text
 * through the server's conversion and the server fixture's template. Then the shape
 * of converted messages, the options, and client mistakes (4xx naming the field). */
#include "harness.h"
#include "lazymoe.h"
#include "server/cache.h"
#include "server/disk_cache.h"
#include "server/request.h"

#include <dirent.h>
#include <jansson.h>
#include <stdio.h>
#include <stdlib.h>
#include <sys/stat.h>
#include <unistd.h>

#define MODEL_DIR LAZYMOE_SOURCE_DIR "/tests/fixtures/server"
#define EXPECTED LAZYMOE_SOURCE_DIR "/tests/fixtures/templates/expected/qwen3-coder.jsonl"

static lazymoe_model *M;

static int parse(srv_api api, const char *body, srv_chat *c, srv_error *e) {
    size_t n = strlen(body);
    return api == SRV_ANTHROPIC   ? srv_parse_anthropic(body, n, c, e)
           : api == SRV_RESPONSES ? srv_parse_responses(body, n, c, e)
                                  : srv_parse_openai(body, n, c, e);
}

/* The Python jinja2 render of corpus conversation `id`, or NULL. */
static char *expected_render(const char *id) {
    FILE *f = fopen(EXPECTED, "r");
    char *line = NULL, *out = NULL;
    size_t cap = 0;
    while (f && !out && getline(&line, &cap, f) > 0) {
        json_error_t je;
        json_t *o = json_loads(line, 0, &je);
        const char *oid = json_string_value(json_object_get(o, "id"));
        if (oid && !strcmp(oid, id)) out = strdup(json_string_value(json_object_get(o, "text")));
        json_decref(o);
    }
    free(line);
    if (f) fclose(f);
    return out;
}

/* Renders a request body through the server's conversion; NULL on error (printed). */
static char *render(srv_api api, const char *body, int *n_tokens) {
    srv_chat c;
    srv_error e;
    char *prompt = NULL;
    int32_t *ids = NULL;
    int n = 0;
    int rc = parse(api, body, &c, &e);
    if (rc != 0) {
        printf("# parse: %d %s\n", e.status, e.message);
        return NULL;
    }
    if (srv_build_prompt(M, &c, INT32_MAX - 1, &prompt, NULL, &ids, &n, &e) != 0) printf("# build: %d %s\n", e.status, e.message);
    srv_chat_free(&c);
    free(ids);
    if (n_tokens) *n_tokens = n;
    return prompt;
}

static void check_render(const char *what, srv_api api, const char *body, const char *expected_id) {
    char *want = expected_render(expected_id);
    char *got = render(api, body, NULL);
    CHECKF(want && got && !strcmp(want, got), "%s: render differs from Python jinja2's\n--- got\n%s\n--- want\n%s", what,
           got ? got : "(null)", want ? want : "(null)");
    free(want);
    free(got);
}

#define TOOLS_OPENAI                                                                                                    \
    "[{\"type\": \"function\", \"function\": {\"name\": \"get_weather\", \"description\": \"Get the current weather in a " \
    "city\", \"parameters\": {\"type\": \"object\", \"properties\": {\"city\": {\"type\": \"string\", \"description\": " \
    "\"City name, e.g. \\\"Paris\\\"\"}, \"unit\": {\"type\": \"string\", \"enum\": [\"celsius\", \"fahrenheit\"], "     \
    "\"description\": \"Temperature unit\"}, \"days\": {\"type\": \"integer\", \"description\": \"Forecast days\", "     \
    "\"default\": 1}}, \"required\": [\"city\"]}}}]"

#define TOOLS_RESPONSES                                                                                                 \
    "[{\"type\": \"function\", \"name\": \"get_weather\", \"description\": \"Get the current weather in a city\", "    \
    "\"strict\": false, \"parameters\": {\"type\": \"object\", \"properties\": {\"city\": {\"type\": \"string\", "   \
    "\"description\": \"City name, e.g. \\\"Paris\\\"\"}, \"unit\": {\"type\": \"string\", \"enum\": [\"celsius\", "  \
    "\"fahrenheit\"], \"description\": \"Temperature unit\"}, \"days\": {\"type\": \"integer\", \"description\": "    \
    "\"Forecast days\", \"default\": 1}}, \"required\": [\"city\"]}}, {\"type\": \"web_search_preview\"}]"

#define TOOLS_ANTHROPIC                                                                                                 \
    "[{\"name\": \"get_weather\", \"description\": \"Get the current weather in a city\", \"input_schema\": {\"type\": " \
    "\"object\", \"properties\": {\"city\": {\"type\": \"string\", \"description\": \"City name, e.g. \\\"Paris\\\"\"}, " \
    "\"unit\": {\"type\": \"string\", \"enum\": [\"celsius\", \"fahrenheit\"], \"description\": \"Temperature unit\"}, "  \
    "\"days\": {\"type\": \"integer\", \"description\": \"Forecast days\", \"default\": 1}}, \"required\": [\"city\"]}, " \
    "\"cache_control\": {\"type\": \"ephemeral\"}}]"

static void test_renders_match_python(void) {
    check_render("openai basic", SRV_OPENAI,
                 "{\"model\": \"m\", \"messages\": [{\"role\": \"system\", \"content\": \"You are a helpful assistant.\"}, "
                 "{\"role\": \"user\", \"content\": [{\"type\": \"text\", \"text\": \"Hello!\"}]}]}",
                 "basic");
    check_render("openai developer role", SRV_OPENAI,
                 "{\"messages\": [{\"role\": \"developer\", \"content\": \"You are a helpful assistant.\"}, "
                 "{\"role\": \"user\", \"content\": \"Hello!\"}]}",
                 "basic");
    check_render("anthropic basic with billing header", SRV_ANTHROPIC,
                 "{\"model\": \"claude-x\", \"max_tokens\": 10, \"system\": [{\"type\": \"text\", \"text\": "
                 "\"x-anthropic-billing-header: cc_version=2.0; cch=1f2e;\"}, {\"type\": \"text\", \"text\": \"You are a "
                 "helpful assistant.\", \"cache_control\": {\"type\": \"ephemeral\"}}], \"messages\": [{\"role\": \"user\", "
                 "\"content\": [{\"type\": \"text\", \"text\": \"Hello!\"}]}]}",
                 "basic");
    check_render("openai parallel tool calls", SRV_OPENAI,
                 "{\"messages\": [{\"role\": \"user\", \"content\": \"Weather in Paris and Tokyo?\"}, {\"role\": "
                 "\"assistant\", \"content\": \"Let me check both.\", \"tool_calls\": [{\"id\": \"call_1\", \"type\": "
                 "\"function\", \"function\": {\"name\": \"get_weather\", \"arguments\": \"{\\\"city\\\": \\\"Paris\\\"}\"}}, "
                 "{\"id\": \"call_2\", \"type\": \"function\", \"function\": {\"name\": \"get_weather\", \"arguments\": "
                 "\"{\\\"city\\\": \\\"Tokyo\\\", \\\"unit\\\": \\\"celsius\\\"}\"}}]}, {\"role\": \"tool\", \"tool_call_id\": "
                 "\"call_1\", \"content\": \"Paris: 20\"}, {\"role\": \"tool\", \"tool_call_id\": \"call_2\", \"content\": "
                 "[{\"type\": \"text\", \"text\": \"Tokyo: 25\"}]}], \"tools\": " TOOLS_OPENAI "}",
                 "parallel-tool-calls");
    check_render("anthropic parallel tool calls", SRV_ANTHROPIC,
                 "{\"max_tokens\": 100, \"messages\": [{\"role\": \"user\", \"content\": \"Weather in Paris and Tokyo?\"}, "
                 "{\"role\": \"assistant\", \"content\": [{\"type\": \"text\", \"text\": \"Let me check both.\"}, {\"type\": "
                 "\"tool_use\", \"id\": \"toolu_1\", \"name\": \"get_weather\", \"input\": {\"city\": \"Paris\"}}, {\"type\": "
                 "\"tool_use\", \"id\": \"toolu_2\", \"name\": \"get_weather\", \"input\": {\"city\": \"Tokyo\", \"unit\": "
                 "\"celsius\"}}]}, {\"role\": \"user\", \"content\": [{\"type\": \"tool_result\", \"tool_use_id\": \"toolu_1\", "
                 "\"content\": \"Paris: 20\"}, {\"type\": \"tool_result\", \"tool_use_id\": \"toolu_2\", \"content\": "
                 "[{\"type\": \"text\", \"text\": \"Tokyo: 25\"}]}]}], \"tools\": " TOOLS_ANTHROPIC "}",
                 "parallel-tool-calls");
    /* The Responses API says the same in items: calls after the assistant's text join
     * its message, outputs become tool messages, instructions the system message. */
    check_render("responses basic", SRV_RESPONSES,
                 "{\"instructions\": \"You are a helpful assistant.\", \"input\": [{\"type\": \"message\", \"role\": "
                 "\"user\", \"content\": [{\"type\": \"input_text\", \"text\": \"Hello!\"}]}]}",
                 "basic");
    check_render("responses parallel tool calls", SRV_RESPONSES,
                 "{\"input\": [{\"role\": \"user\", \"content\": \"Weather in Paris and Tokyo?\"}, {\"type\": "
                 "\"message\", \"role\": \"assistant\", \"content\": [{\"type\": \"output_text\", \"text\": \"Let me "
                 "check both.\"}]}, {\"type\": \"function_call\", \"call_id\": \"call_1\", \"name\": \"get_weather\", "
                 "\"arguments\": \"{\\\"city\\\": \\\"Paris\\\"}\"}, {\"type\": \"function_call\", \"call_id\": \"call_2\", "
                 "\"name\": \"get_weather\", \"arguments\": \"{\\\"city\\\": \\\"Tokyo\\\", \\\"unit\\\": "
                 "\\\"celsius\\\"}\"}, {\"type\": \"function_call_output\", \"call_id\": \"call_1\", \"output\": \"Paris: "
                 "20\"}, {\"type\": \"function_call_output\", \"call_id\": \"call_2\", \"output\": [{\"type\": "
                 "\"input_text\", \"text\": \"Tokyo: 25\"}]}], \"tools\": " TOOLS_RESPONSES ", \"tool_choice\": \"auto\"}",
                 "parallel-tool-calls");
}

/* The messages a request becomes, compared as JSON. */
static void check_messages(srv_api api, const char *body, const char *want_json) {
    srv_chat c;
    srv_error e;
    int rc = parse(api, body, &c, &e);
    CHECKF(rc == 0, "%s", e.message);
    if (rc != 0) return;
    json_error_t je;
    json_t *want = json_loads(want_json, JSON_ALLOW_NUL, &je);
    CHECKF(want, "bad expected JSON: %s", je.text);
    int same = want && json_equal(want, c.messages);
    char *got = json_dumps(c.messages, JSON_COMPACT);
    CHECKF(same, "messages\n got %s\nwant %s", got, want_json);
    free(got);
    json_decref(want);
    srv_chat_free(&c);
}

static void test_message_shapes(void) {
    /* Responses: a reasoning item goes to the next assistant message (content, else
     * summary); a custom call carries {"input": raw text}; developer is system; a
     * call with no assistant text before it gets an empty assistant message; NUL
     * bytes stay in the text. */
    check_messages(SRV_RESPONSES,
                   "{\"instructions\": \"sys\", \"input\": [{\"role\": \"developer\", \"content\": \"dev\"}, "
                   "{\"role\": \"user\", \"content\": \"a\\u0000b\"}, {\"type\": \"reasoning\", \"summary\": [{\"type\": "
                   "\"summary_text\", \"text\": \"short\"}], \"content\": [{\"type\": \"reasoning_text\", \"text\": "
                   "\"long\"}]}, {\"type\": \"custom_tool_call\", \"call_id\": \"c1\", \"name\": \"apply_patch\", "
                   "\"input\": \"*** Begin Patch\\n\"}, {\"type\": \"custom_tool_call_output\", \"call_id\": \"c1\", "
                   "\"output\": \"ok\"}, {\"type\": \"reasoning\", \"summary\": [{\"type\": \"summary_text\", \"text\": "
                   "\"only a summary\"}]}, {\"type\": \"message\", \"role\": \"assistant\", \"content\": [{\"type\": "
                   "\"output_text\", \"text\": \"done\"}, {\"type\": \"refusal\", \"refusal\": \"no\"}]}], \"tools\": "
                   "[{\"type\": \"custom\", \"name\": \"apply_patch\"}, {\"type\": \"web_search\"}]}",
                   "[{\"role\": \"system\", \"content\": \"sys\"}, {\"role\": \"system\", \"content\": \"dev\"}, "
                   "{\"role\": \"user\", \"content\": \"a\\u0000b\"}, {\"role\": \"assistant\", \"content\": \"\", "
                   "\"reasoning_content\": \"long\", \"tool_calls\": [{\"id\": \"c1\", \"type\": \"function\", "
                   "\"function\": {\"name\": \"apply_patch\", \"arguments\": {\"input\": \"*** Begin Patch\\n\"}}}]}, "
                   "{\"role\": \"tool\", \"content\": \"ok\", \"tool_call_id\": \"c1\"}, {\"role\": \"assistant\", "
                   "\"content\": \"done\\nno\", \"reasoning_content\": \"only a summary\"}]");
    /* Anthropic: tool results become tool messages before the user's text; is_error is
     * said; thinking goes back as reasoning_content; inline system messages stay. */
    check_messages(SRV_ANTHROPIC,
                   "{\"messages\": [{\"role\": \"system\", \"content\": \"inline\"}, {\"role\": \"user\", \"content\": "
                   "\"q\"}, {\"role\": \"assistant\", \"content\": [{\"type\": \"thinking\", \"thinking\": \"hmm\", "
                   "\"signature\": \"s\"}, {\"type\": \"redacted_thinking\", \"data\": \"x\"}, {\"type\": \"tool_use\", "
                   "\"id\": \"t1\", \"name\": \"f\", \"input\": {\"a\": [1, 2]}}]}, {\"role\": \"user\", \"content\": "
                   "[{\"type\": \"tool_result\", \"tool_use_id\": \"t1\", \"content\": \"boom\", \"is_error\": true}, "
                   "{\"type\": \"text\", \"text\": \"and\"}, {\"type\": \"text\", \"text\": \"then\"}]}]}",
                   "[{\"role\": \"system\", \"content\": \"inline\"}, {\"role\": \"user\", \"content\": \"q\"}, "
                   "{\"role\": \"assistant\", \"content\": \"\", \"reasoning_content\": \"hmm\", \"tool_calls\": "
                   "[{\"id\": \"t1\", \"type\": \"function\", \"function\": {\"name\": \"f\", \"arguments\": {\"a\": [1, "
                   "2]}}}]}, {\"role\": \"tool\", \"content\": \"Error: boom\", \"tool_call_id\": \"t1\"}, {\"role\": "
                   "\"user\", \"content\": \"and\\nthen\"}]");
    /* OpenAI: null content becomes "", arguments become an object, reasoning comes back. */
    check_messages(SRV_OPENAI,
                   "{\"messages\": [{\"role\": \"user\", \"content\": null}, {\"role\": \"assistant\", \"content\": null, "
                   "\"reasoning_content\": \"r\", \"tool_calls\": [{\"id\": \"c\", \"type\": \"function\", \"function\": "
                   "{\"name\": \"f\", \"arguments\": \"\"}}]}, {\"role\": \"tool\", \"tool_call_id\": \"c\", \"content\": "
                   "\"ok\"}]}",
                   "[{\"role\": \"user\", \"content\": \"\"}, {\"role\": \"assistant\", \"content\": \"\", \"tool_calls\": "
                   "[{\"id\": \"c\", \"type\": \"function\", \"function\": {\"name\": \"f\", \"arguments\": {}}}], "
                   "\"reasoning_content\": \"r\"}, {\"role\": \"tool\", \"content\": \"ok\", \"tool_call_id\": \"c\"}]");
}

static void test_options(void) {
    srv_chat c;
    srv_error e;
    const char *b = "{\"messages\": [{\"role\": \"user\", \"content\": \"x\"}], \"max_tokens\": 50, "
                    "\"max_completion_tokens\": 7, \"stop\": [\"a\", \"\", \"bc\"], \"temperature\": 0.5, \"top_k\": -1, "
                    "\"seed\": 9, \"stream\": true, \"stream_options\": {\"include_usage\": true}, \"tools\": " TOOLS_OPENAI
                    ", \"tool_choice\": \"none\", \"reasoning_effort\": \"low\", \"unknown_field\": {\"x\": 1}}";
    CHECKF(srv_parse_openai(b, strlen(b), &c, &e) == 0, "%s", e.message);
    CHECK_EQ_INT(c.max_tokens, 7); /* max_completion_tokens wins */
    CHECK_EQ_INT(c.n_stop, 2);     /* the empty stop string is dropped */
    CHECK(c.n_stop == 2 && !strcmp(c.stop[0], "a") && !strcmp(c.stop[1], "bc"));
    CHECK(c.stream && c.include_usage && c.tools == NULL && c.tool_choice == SRV_TOOLS_NONE);
    CHECK((c.set & SRV_SET_TEMPERATURE) && (c.set & SRV_SET_TOP_K) && (c.set & SRV_SET_SEED) && !(c.set & SRV_SET_TOP_P));
    CHECK(c.sampling.top_k == 0 && c.sampling.seed == 9);
    CHECK(json_is_string(json_object_get(c.kwargs, "reasoning_effort")));
    lazymoe_sampling s;
    srv_chat_sampling(&c, M, &s);
    CHECK(s.temperature == 0.5f && s.seed == 9);
    srv_chat_free(&c);
    const char *a = "{\"messages\": [{\"role\": \"user\", \"content\": \"x\"}], \"stop_sequences\": [\"END\"], "
                    "\"thinking\": {\"type\": \"disabled\"}, \"tools\": " TOOLS_ANTHROPIC ", \"tool_choice\": {\"type\": "
                    "\"any\"}, \"top_k\": 5}";
    CHECKF(srv_parse_anthropic(a, strlen(a), &c, &e) == 0, "%s", e.message);
    CHECK(c.max_tokens == -1 && c.n_stop == 1 && c.tool_choice == SRV_TOOLS_REQUIRED && json_array_size(c.tools) == 1);
    CHECK(json_is_false(json_object_get(c.kwargs, "enable_thinking")));
    CHECK(!strcmp(json_string_value(json_object_get(json_object_get(json_array_get(c.tools, 0), "function"), "name")),
                  "get_weather"));
    srv_chat_free(&c);
    const char *r = "{\"input\": \"x\", \"max_output_tokens\": 9, \"temperature\": 0.25, \"reasoning\": {\"effort\": "
                    "\"high\"}, \"tools\": [{\"type\": \"function\", \"name\": \"f\"}, {\"type\": \"custom\", \"name\": "
                    "\"g\"}, {\"type\": \"file_search\"}, {\"type\": \"web_search\"}], \"tool_choice\": {\"type\": "
                    "\"function\", \"name\": \"f\"}, \"text\": {\"format\": {\"type\": \"json_schema\", \"name\": \"s\", "
                    "\"schema\": {\"type\": \"object\"}, \"strict\": true}}, \"store\": false, \"stream\": true, "
                    "\"include\": [\"reasoning.encrypted_content\"]}";
    CHECKF(srv_parse_responses(r, strlen(r), &c, &e) == 0, "%s", e.message);
    CHECK(c.api == SRV_RESPONSES && c.max_tokens == 9 && c.stream && (c.set & SRV_SET_TEMPERATURE));
    CHECK(json_array_size(c.tools) == 2 && json_object_get(c.freeform_tools, "g") && !json_object_get(c.freeform_tools, "f"));
    CHECKF(!strcmp(c.skipped_tools, "file_search,web_search"), "skipped %s", c.skipped_tools);
    CHECK(c.tool_choice == SRV_TOOLS_REQUIRED && c.tool_choice_name && !strcmp(c.tool_choice_name, "f"));
    CHECK(!strcmp(json_string_value(json_object_get(c.kwargs, "reasoning_effort")), "high"));
    json_t *rf = json_pack("{s:s, s:{s:s, s:{s:s}, s:b}}", "type", "json_schema", "json_schema", "name", "s", "schema",
                           "type", "object", "strict", 1);
    CHECK(json_equal(rf, c.response_format)); /* chat completions' response_format */
    json_decref(rf);
    srv_chat_free(&c);
}

static void check_error(srv_api api, const char *body, int status, const char *needle) {
    srv_chat c;
    srv_error e;
    int rc = parse(api, body, &c, &e);
    if (rc == 0) {
        char *p = NULL;
        int32_t *ids = NULL;
        int n;
        rc = srv_build_prompt(M, &c, INT32_MAX - 1, &p, NULL, &ids, &n, &e);
        free(p);
        free(ids);
        srv_chat_free(&c);
    }
    CHECKF(rc != 0, "accepted: %s", body);
    if (rc == 0) return;
    CHECKF(e.status == status && strstr(e.message, needle), "%s -> %d \"%s\" (wanted %d naming %s)", body, e.status,
           e.message, status, needle);
    CHECK(!strcmp(e.type, "invalid_request_error"));
}

static void test_client_mistakes(void) {
    check_error(SRV_OPENAI, "{\"messages\": [{\"role\": \"user\", \"content\": \"x\"}], \"top_p\": 2}", 400, "top_p");
    check_error(SRV_OPENAI, "{\"messages\": [{\"role\": \"user\", \"content\": \"x\"}, 7]}", 400, "messages[1]");
    check_error(SRV_OPENAI, "{\"messages\": [{\"role\": \"user\", \"content\": \"x\"}], \"stop\": [\"a\", 1]}", 400, "stop[1]");
    check_error(SRV_OPENAI, "{\"a\": 1, \"a\": 2, \"messages\": []}", 400, "JSON");
    check_error(SRV_OPENAI, "{\"messages\": [{\"role\": \"user\", \"content\": \"\xff\xfe\"}]}", 400, "JSON");
    check_error(SRV_ANTHROPIC, "{\"messages\": [{\"role\": \"user\", \"content\": [{\"type\": \"document\"}]}]}", 400,
                "messages[0].content[0].type");
    check_error(SRV_ANTHROPIC, "{\"messages\": [{\"role\": \"assistant\", \"content\": [{\"type\": \"tool_result\", "
                               "\"tool_use_id\": \"x\"}]}]}", 400, "assistant");
    check_error(SRV_ANTHROPIC, "{\"messages\": []}", 400, "messages");
    check_error(SRV_RESPONSES, "{\"input\": [{\"type\": \"function_call\", \"call_id\": \"c\", \"name\": \"f\", "
                               "\"arguments\": \"[1]\"}]}", 400, "input[0].arguments");
    check_error(SRV_RESPONSES, "{\"input\": [{\"role\": \"user\", \"content\": [{\"type\": \"input_file\"}]}]}", 400,
                "input[0].content[0].type");
    check_error(SRV_RESPONSES, "{\"input\": \"x\", \"conversation\": \"conv_1\"}", 400, "conversation");
    check_error(SRV_RESPONSES, "{\"input\": [{\"type\": \"reasoning\", \"content\": [\"x\"]}]}", 400, "input[0].content[0]");
    /* The template refuses: a 400 that says so (Qwen3-Coder concatenates content, so a
     * tool call with non-object arguments is refused at parse time). */
    check_error(SRV_ANTHROPIC, "{\"messages\": [{\"role\": \"assistant\", \"content\": [{\"type\": \"tool_use\", \"name\": "
                               "\"f\", \"input\": [1]}]}]}", 400, "input");
    /* nesting far deeper than any request needs */
    char deep[4096] = "{\"messages\": [{\"role\": \"user\", \"content\": \"x\"}], \"metadata\": ";
    size_t n = strlen(deep);
    for (int i = 0; i < 500; i++) deep[n++] = '[';
    for (int i = 0; i < 500; i++) deep[n++] = ']';
    deep[n++] = '}';
    deep[n] = 0;
    check_error(SRV_ANTHROPIC, deep, 400, "nests deeper");
}

/* The prompt cache's choices (server/cache.h): extend a conversation in place, keep an
 * unrelated one apart, serve a prompt the session already holds, free sessions when
 * the KV budget needs room -- one-off requests before a conversation in use. */
static void fill(lazymoe_session *s, const int32_t *ids, int n, int reused) {
    char err[512];
    CHECK(lazymoe_session_truncate(s, reused, err, sizeof err) == 0);
    CHECK(lazymoe_session_eval(s, ids + reused, n - reused, NULL, 0, err, sizeof err) == 0);
}

/* A request that must get a session at once (none running beside it). */
static lazymoe_session *take(srv_prompt_cache *c, const int32_t *ids, int n, int max_new, int *reused) {
    char err[512];
    int wait = -1;
    lazymoe_session *s = srv_cache_take(c, ids, n, max_new, reused, &wait, err, sizeof err);
    CHECKF(s != NULL && wait == 0, "%s", err);
    return s;
}

/* One request: take, evaluate the prompt as generation would, give back. */
static lazymoe_session *serve(srv_prompt_cache *c, const int32_t *ids, int n, int max_new, int *reused) {
    lazymoe_session *s = take(c, ids, n, max_new, reused);
    if (s) {
        fill(s, ids, n, *reused);
        srv_cache_put(c, s);
    }
    return s;
}

/* A cache of two slots and two conversations of up to N tokens that share their
 * first 5 (a system prompt). */
enum { N = 3000 };
typedef struct {
    srv_prompt_cache c;
    int32_t *a, *b;
} cache_case;

static void cache_case_open(cache_case *t, int budget_tokens) {
    char err[512];
    t->a = malloc(sizeof(int32_t) * N);
    t->b = malloc(sizeof(int32_t) * N);
    for (int i = 0; i < N; i++) t->a[i] = 3 + i % 300, t->b[i] = i < 5 ? t->a[i] : 7 + i % 200;
    CHECK(srv_cache_init(&t->c, M, 2, budget_tokens, err, sizeof err) == 0);
}

static void cache_case_close(cache_case *t) {
    srv_cache_free(&t->c);
    free(t->a);
    free(t->b);
}

static void test_prompt_cache_policy(void) {
    cache_case t;
    cache_case_open(&t, 0); /* budget: one context (4096) */
    srv_prompt_cache *c = &t.c;
    const int32_t *a = t.a, *b = t.b;
    int reused = -1, sessions, tokens;
    lazymoe_session *s1 = serve(c, a, 100, 50, &reused);
    CHECK(s1 && reused == 0);
    CHECK(serve(c, a, 150, 50, &reused) == s1 && reused == 100); /* the next turn */
    lazymoe_session *s3 = serve(c, b, 120, 50, &reused); /* shares 5 tokens only */
    CHECK(s3 && s3 != s1 && reused == 0);
    srv_cache_usage(c, &sessions, &tokens);
    CHECK(sessions == 2 && tokens == 270);
    CHECK(serve(c, a, 40, 50, &reused) == s1 && reused == 39); /* held entirely by s1 */
    /* A long conversation fills the budget: the other session is freed for it. */
    lazymoe_session *s5 = take(c, a, N, 1000, &reused);
    CHECK(s5 == s1 && reused == 40);
    srv_cache_usage(c, &sessions, &tokens);
    CHECKF(sessions == 1, "%d sessions kept while a 4000-token request needs the whole budget", sessions);
    fill(s5, a, N, reused);
    srv_cache_put(c, s5);
    /* An unrelated short request takes the free slot and the long conversation stays:
     * cut to the KV memory it holds (3072 positions), it leaves room. */
    lazymoe_session *s6 = take(c, b, 200, 100, &reused);
    CHECK(s6 && s6 != s1 && reused == 0);
    CHECK_EQ_INT(lazymoe_session_capacity(s1), 3072);
    srv_cache_usage(c, &sessions, &tokens);
    CHECKF(sessions == 2 && tokens == N, "%d sessions, %d tokens", sessions, tokens);
    fill(s6, b, 200, reused);
    srv_cache_put(c, s6);
    /* Another one-off takes the one-off's slot, not the conversation in use. */
    int32_t *d = malloc(sizeof(int32_t) * 600);
    for (int i = 0; i < 600; i++) d[i] = 11 + i % 150;
    lazymoe_session *s7 = take(c, d, 600, 100, &reused);
    CHECK(s7 == s6 && reused == 0);
    srv_cache_usage(c, &sessions, &tokens);
    CHECKF(sessions == 2 && tokens == N + 200, "%d sessions, %d tokens", sessions, tokens);
    /* One that cannot fit beside it frees it. */
    srv_cache_put(c, s7);
    lazymoe_session *s8 = take(c, d, 600, 2000, &reused);
    CHECK(s8 == s6);
    srv_cache_usage(c, &sessions, &tokens);
    CHECKF(sessions == 1, "%d sessions", sessions);
    srv_cache_put(c, s8);
    /* Requests running at once (--parallel): a running one counts for the room it may
     * grow to and is never evicted; a request that does not fit beside it waits. */
    char err[512];
    int wait = 0;
    lazymoe_session *r1 = srv_cache_take(c, a, 100, 2500, &reused, &wait, err, sizeof err);
    CHECK(r1 && !wait);
    lazymoe_session *r2 = srv_cache_take(c, d, 600, 1500, &reused, &wait, err, sizeof err); /* 2600 + 2100 > 4096 */
    CHECK(!r2 && wait == 1);
    CHECK_STR_CONTAINS(err, "waiting for room");
    lazymoe_session *r3 = srv_cache_take(c, d, 600, 100, &reused, &wait, err, sizeof err); /* 2600 + 700 fits */
    CHECK(r3 && r3 != r1 && !wait);
    lazymoe_session *r4 = srv_cache_take(c, b, 10, 10, &reused, &wait, err, sizeof err); /* both slots run */
    CHECK(!r4 && wait == 1);
    srv_cache_usage(c, &sessions, &tokens);
    CHECK(sessions == 2);
    srv_cache_put(c, r3);
    srv_cache_put(c, r1);
    r2 = srv_cache_take(c, d, 600, 1500, &reused, &wait, err, sizeof err); /* now it fits */
    CHECK(r2 && !wait);
    srv_cache_put(c, r2);
    free(d);
    cache_case_close(&t);
}

/* KV positions the cache's sessions other than `taken` hold memory for. */
static long long others_capacity(const srv_prompt_cache *c, const lazymoe_session *taken) {
    long long sum = 0;
    for (int i = 0; i < c->n_slots; i++)
        if (c->slots[i].s && c->slots[i].s != taken) sum += lazymoe_session_capacity(c->slots[i].s);
    return sum;
}

/* A conversation keeps the KV memory it grew to between turns, so its next turn
 * extends it in place (no shrink after a request, no regrowing copy on the next);
 * sessions are cut to what they hold only when the budget needs the room, before
 * any is freed, and the budget still bounds the cache. */
static void test_prompt_cache_keeps_capacity(void) {
    cache_case t;
    cache_case_open(&t, 0); /* budget: one context (4096) */
    int reused = -1, sessions, tokens;
    lazymoe_session *s1 = serve(&t.c, t.a, 600, 50, &reused); /* grows by doubling: 256, 512, 1024 */
    CHECK(s1 && reused == 0);
    CHECKF(lazymoe_session_capacity(s1) == 1024, "capacity %d after the request: the cache shrank a session "
           "though the budget had room", lazymoe_session_capacity(s1));
    /* The next turn: 900 tokens fit the 1024 positions it kept; cut to the 768 it held,
     * it would have had to grow (copy) to 1536. */
    CHECK(serve(&t.c, t.a, 900, 50, &reused) == s1 && reused == 600);
    CHECKF(lazymoe_session_capacity(s1) == 1024, "capacity %d: the second turn regrew the KV cache",
           lazymoe_session_capacity(s1));
    /* Its third turn is cut back to 700 tokens (an edited last message): 1024 kept. */
    CHECK(serve(&t.c, t.a, 700, 10, &reused) == s1 && reused == 699);
    CHECK_EQ_INT(lazymoe_session_capacity(s1), 1024);
    /* Another conversation needing 3300 positions: 1024 + 3300 exceeds the budget, but
     * the first one cut to what it holds (768) leaves room, so it is kept, not freed. */
    lazymoe_session *s4 = take(&t.c, t.b, 3000, 300, &reused);
    CHECK(s4 && s4 != s1 && reused == 0);
    CHECK_EQ_INT(lazymoe_session_capacity(s1), 768);
    CHECKF(others_capacity(&t.c, s4) + 3300 <= 4096, "%lld positions kept beside a 3300-position request",
           others_capacity(&t.c, s4));
    srv_cache_usage(&t.c, &sessions, &tokens);
    CHECKF(sessions == 2 && tokens == 700, "%d sessions, %d tokens", sessions, tokens);
    fill(s4, t.b, 3000, reused);
    srv_cache_put(&t.c, s4);
    /* The first conversation again, needing 2000 positions: the second one holds 3000
     * of its 4096 (cut to 3072, still too many), so it is freed. */
    lazymoe_session *s5 = take(&t.c, t.a, 1900, 100, &reused);
    CHECK(s5 == s1 && reused == 700);
    srv_cache_usage(&t.c, &sessions, &tokens);
    CHECKF(sessions == 1, "%d sessions kept while 3072 + 2000 positions exceed the budget", sessions);
    CHECK(others_capacity(&t.c, s5) == 0);
    srv_cache_put(&t.c, s5);
    cache_case_close(&t);
    /* A session doubles only into the room the budget has. Budget 4850: a holds 1100
     * tokens in 2048 positions; b (2800 positions needed) would double to 4096, but
     * gets the 2802 left beside a (before, it took 4096: 6144 positions in all). A
     * retry of a's last request then fits in place: both kept, neither cut. */
    cache_case_open(&t, 4850);
    lazymoe_session *t1 = serve(&t.c, t.a, 1100, 100, &reused);
    lazymoe_session *t2 = take(&t.c, t.b, 2700, 100, &reused);
    CHECK(t1 && t2 && t2 != t1 && reused == 0);
    CHECK_EQ_INT(lazymoe_session_capacity(t1), 2048); /* 2048 + 2800 fit the budget: not cut */
    fill(t2, t.b, 2700, reused);
    CHECK_EQ_INT(lazymoe_session_capacity(t2), 2802);
    srv_cache_put(&t.c, t2);
    lazymoe_session *t3 = take(&t.c, t.a, 1100, 100, &reused);
    CHECK(t3 == t1 && reused == 1099);
    CHECK_EQ_INT(lazymoe_session_capacity(t2), 2802);
    CHECK_EQ_INT(lazymoe_session_capacity(t1), 2048);
    srv_cache_usage(&t.c, &sessions, &tokens);
    CHECKF(sessions == 2 && tokens == 3800, "%d sessions, %d tokens", sessions, tokens);
    CHECK(others_capacity(&t.c, t3) + 2048 <= 4850);
    srv_cache_put(&t.c, t3);
    cache_case_close(&t);
    /* With requests running (--parallel): u1 (1200 positions needed) may double to
     * 2048 while alone, but u2 (2810) fits only beside what u1 needs, so u1's room is
     * taken back: it holds 1200 (before: 2048, and 2048 + 2810 > 4096). Its next
     * request fits in place beside u2 without waiting. */
    cache_case_open(&t, 0);
    char err[512];
    int wait = -1;
    lazymoe_session *u1 = take(&t.c, t.a, 1100, 100, &reused);
    lazymoe_session *u2 = take(&t.c, t.b, 10, 2800, &reused); /* 1200 + 2810 fit beside it */
    CHECK(u1 && u2 && u1 != u2);
    fill(u1, t.a, 1100, 0);
    srv_cache_put(&t.c, u1);
    CHECK_EQ_INT(lazymoe_session_capacity(u1), 1200);
    lazymoe_session *u3 = srv_cache_take(&t.c, t.a, 1100, 100, &reused, &wait, err, sizeof err);
    CHECKF(u3 == u1 && wait == 0, "%s", err);
    CHECK_EQ_INT(lazymoe_session_capacity(u1), 1200);
    if (u3) srv_cache_put(&t.c, u3);
    srv_cache_put(&t.c, u2);
    cache_case_close(&t);
}

/* Requests running at once stay inside the KV budget the memory plan reserves: a
 * session doubles only into room the budget has beside the others, and a request
 * that fits beside what the running ones need takes back the room they were given
 * to double into. Before, KV caches doubled regardless, so two running requests that
 * fit the budget by their needs (700 + 3200 of 4096) held 1024 + 4096 positions. */
static void test_running_requests_stay_in_kv_budget(void) {
    cache_case t;
    cache_case_open(&t, 0); /* budget: one context (4096) */
    char err[512];
    int reused = 0, wait = 0;
    lazymoe_session *r1 = srv_cache_take(&t.c, t.a, 600, 100, &reused, &wait, err, sizeof err);
    CHECKF(r1 && !wait, "%s", err);
    lazymoe_session *r2 = srv_cache_take(&t.c, t.b, 1200, 2000, &reused, &wait, err, sizeof err);
    CHECKF(r2 && r2 != r1 && !wait, "%s", err);
    if (r1 && r2) {
        fill(r1, t.a, 700, 0); /* the prompt and every generated token */
        fill(r2, t.b, 2100, 0); /* still generating */
        int c1 = lazymoe_session_capacity(r1), c2 = lazymoe_session_capacity(r2);
        CHECKF(c1 == 700 && c2 >= 2100 && c1 + c2 <= 4096,
               "running sessions hold %d + %d KV positions, needing 700 + 3200, in a budget of 4096", c1, c2);
        srv_cache_put(&t.c, r1);
        srv_cache_put(&t.c, r2);
    }
    cache_case_close(&t);
}

/* Bytes of the files in dir, and how many there are; remove = 1 deletes them. */
static unsigned long long dir_bytes(const char *dir, int *files, int remove) {
    unsigned long long total = 0;
    *files = 0;
    DIR *d = opendir(dir);
    struct dirent *de;
    char path[4200];
    struct stat st;
    while (d && (de = readdir(d)))
        if (de->d_name[0] != '.' && snprintf(path, sizeof path, "%s/%s", dir, de->d_name) > 0 && stat(path, &st) == 0) {
            total += (unsigned long long)st.st_size;
            (*files)++;
            if (remove) unlink(path);
        }
    if (d) closedir(d);
    return total;
}

/* Stores the first n tokens of the conversation that starts with `first`. */
static void store_prompt(srv_disk_cache *dc, int first, int n) {
    char err[512];
    lazymoe_session *s = NULL;
    CHECKF(lazymoe_session_create(&s, M, err, sizeof err) == 0, "%s", err);
    int32_t *ids = malloc(sizeof(int32_t) * (size_t)n);
    for (int i = 0; i < n; i++) ids[i] = 3 + (first + i * 7) % 300;
    ids[0] = first;
    CHECKF(s && lazymoe_session_eval(s, ids, n, NULL, 0, err, sizeof err) == 0, "%s", err);
    if (s) srv_disk_store(dc, s, n, n);
    lazymoe_session_free(s);
    free(ids);
}

/* The disk prompt cache holds its size limit: a file's exact size is known before it
 * is written (room is made first, so the directory stays within the limit while the
 * temporary file is written too), and a prompt too big for the limit on its own is
 * not stored. Before, it was written, then every other stored prompt was removed to
 * make room for it, then it too. */
static void test_disk_cache_limit(void) {
    char dir[] = "/tmp/lazymoe-diskcache-XXXXXX", err[512];
    CHECK(mkdtemp(dir) != NULL);
    unsigned long long one = lazymoe_session_file_bytes(M, 1100);
    srv_disk_cache dc;
    CHECKF(srv_disk_init(&dc, M, dir, one * 5 / 2, err, sizeof err) == 0, "%s", err); /* two such files */
    int files = 0;
    store_prompt(&dc, 10, 1100);
    CHECK_EQ_INT((long long)dir_bytes(dir, &files, 0), (long long)one); /* the size was exact */
    CHECK_EQ_INT(files, 1);
    store_prompt(&dc, 11, 1100);
    CHECK_EQ_INT(dc.n, 2);
    store_prompt(&dc, 12, 3000); /* its file alone is over the limit */
    CHECKF(lazymoe_session_file_bytes(M, 3000) > one * 5 / 2, "the large prompt fits: %llu",
           (unsigned long long)lazymoe_session_file_bytes(M, 3000));
    unsigned long long bytes = dir_bytes(dir, &files, 0);
    CHECKF(files == 2 && bytes == 2 * one, "a prompt over the limit left %d files, %llu bytes (two of %llu expected)",
           files, bytes, one);
    store_prompt(&dc, 13, 1100); /* the least recently used (10) makes room */
    bytes = dir_bytes(dir, &files, 0);
    CHECKF(files == 2 && bytes <= one * 5 / 2, "%d files, %llu bytes", files, bytes);
    for (int i = 0; i < dc.n; i++) CHECKF(dc.e[i].tokens[0] != 10, "the oldest prompt was kept: %s", dc.e[i].path);
    srv_disk_free(&dc);
    dir_bytes(dir, &files, 1);
    CHECK(rmdir(dir) == 0);
}

int main(void) {
    lazymoe_options o;
    lazymoe_options_init(&o);
    o.max_context = 4096;
    o.no_warm_start = 1;
    char err[512];
    if (lazymoe_model_open(&M, MODEL_DIR, &o, err, sizeof err) != 0) {
        printf("FAIL server_request_open_model: %s\n", err);
        return 1;
    }
    TEST_CASE("server_request_renders_match_python_jinja2", test_renders_match_python);
    TEST_CASE("server_request_message_shapes", test_message_shapes);
    TEST_CASE("server_request_options", test_options);
    TEST_CASE("server_request_client_mistakes_are_4xx", test_client_mistakes);
    TEST_CASE("server_prompt_cache_policy", test_prompt_cache_policy);
    TEST_CASE("server_prompt_cache_keeps_capacity_between_turns", test_prompt_cache_keeps_capacity);
    TEST_CASE("server_disk_cache_holds_its_limit", test_disk_cache_limit);
    TEST_CASE("server_running_requests_stay_in_kv_budget", test_running_requests_stay_in_kv_budget);
    lazymoe_model_close(M);
    TEST_EXIT();
}
