/* libFuzzer target: chat templates, source and data. The input is a template, then
 * optionally a line "@@DATA@@" and a JSON value: an array becomes the messages, an
 * object {"messages", "tools", "kwargs"...} the whole request; without one a fixed
 * conversation with tools and a tool result is rendered. Render limits are set low so
 * a template that loops or grows stops quickly with an error: far below the server's,
 * because the slowest inputs (loops, long outputs) set the campaign's rate, and every
 * limit's error path is still reached. */
#include "common/error.h"
#include "text/chat_template.h"

#include <jansson.h>
#include <stdlib.h>
#include <string.h>

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

static const char default_messages[] =
    "[{\"role\":\"system\",\"content\":\"You are terse.\"},{\"role\":\"user\",\"content\":\"hi \\u00e9\"},"
    "{\"role\":\"assistant\",\"content\":\"\",\"reasoning_content\":\"think\",\"tool_calls\":[{\"id\":\"c1\","
    "\"type\":\"function\",\"function\":{\"name\":\"f\",\"arguments\":{\"a\":1}}}]},"
    "{\"role\":\"tool\",\"tool_call_id\":\"c1\",\"content\":\"42\"},{\"role\":\"user\",\"content\":[{\"type\":"
    "\"text\",\"text\":\"more\"}]}]";
static const char default_tools[] =
    "[{\"type\":\"function\",\"function\":{\"name\":\"f\",\"description\":\"d\",\"parameters\":{\"type\":"
    "\"object\",\"properties\":{\"a\":{\"type\":\"integer\"}}}}}]";

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    const char *src = (const char *)data;
    size_t src_len = size, data_len = 0;
    const char *json_text = NULL;
    const void *mark = memmem(data, size, "@@DATA@@", 8);
    if (mark) {
        src_len = (size_t)((const char *)mark - src);
        json_text = (const char *)mark + 8;
        data_len = size - src_len - 8;
    }
    json_t *cfg = json_pack("{s:s, s:s, s:s}", "bos_token", "<s>", "eos_token", "</s>", "unk_token", "<unk>");
    lm_chat_template *t = NULL;
    char err[LM_ERR_LEN];
    if (lm_chat_template_from_source(src, src_len, cfg, &t, err) == 0) {
        json_t *msgs = json_loads(default_messages, 0, NULL), *tools = json_loads(default_tools, 0, NULL);
        json_t *given = json_text ? json_loadb(json_text, data_len, JSON_DECODE_ANY | JSON_ALLOW_NUL, NULL) : NULL;
        lm_chat_request req = {.messages = msgs, .tools = tools, .add_generation_prompt = true};
        if (json_is_array(given)) {
            req.messages = given;
        } else if (json_is_object(given)) {
            const json_t *m = json_object_get(given, "messages");
            if (json_is_array(m)) req.messages = m;
            const json_t *tl = json_object_get(given, "tools");
            req.tools = json_is_array(tl) ? tl : NULL;
            req.documents = json_is_array(json_object_get(given, "documents")) ? json_object_get(given, "documents") : NULL;
            req.kwargs = given;
            req.add_generation_prompt = !json_is_false(json_object_get(given, "add_generation_prompt"));
        }
        lm_jinja_options o = {0};
        o.now_unix = 1700000000;
        o.max_loop_iterations = 5000;
        o.max_output_bytes = 1 << 15;
        o.max_memory_bytes = 4u << 20;
        o.max_seconds = 0.25;
        char *out = NULL;
        size_t out_len = 0;
        if (lm_chat_template_render(t, &req, &o, &out, &out_len, err) == 0) free(out);
        json_decref(given);
        json_decref(msgs);
        json_decref(tools);
        lm_chat_template_free(t);
    }
    json_decref(cfg);
    return 0;
}
