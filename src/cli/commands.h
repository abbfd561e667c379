/* Subcommands of the lazymoe CLI; each takes argv with argv[0] = its own name. */
#ifndef LAZYMOE_COMMANDS_H
#define LAZYMOE_COMMANDS_H

int cmd_logits(int argc, char **argv);
int cmd_run(int argc, char **argv);
int cmd_info(int argc, char **argv);
/* lazymoe perplexity MODEL --text FILE [--window N] [--json] */
int cmd_perplexity(int argc, char **argv);
/* lazymoe chat MODEL: interactive conversation (cmd_generate.c) */
int cmd_chat(int argc, char **argv);
/* lazymoe serve MODEL [--host H] [--port N] [--api-key K] ... (cmd_serve.c) */
int cmd_serve(int argc, char **argv);
/* lazymoe bench MODEL [--memory SIZE] [--prompt-tokens N] [--gen-tokens N] [--json] ... */
int cmd_bench(int argc, char **argv);
/* lazymoe convert HF_DIR OUT_DIR [--bits N] [--group-size N] [--dtype bf16|f16|f32] ... */
int cmd_convert(int argc, char **argv);
/* lazymoe tokenize DIR --jsonl IN.jsonl [--no-special] [--decode] */
int cmd_tokenize(int argc, char **argv);
/* lazymoe template DIR --jsonl IN.jsonl [--now SECS] */
int cmd_template(int argc, char **argv);
/* lazymoe synth --preset NAME --out DIR [--layers N] [--bits 4|8] [--seed S] ... */
int cmd_synth(int argc, char **argv);
/* lazymoe replay TRACE [--capacity N]... [--policy P]...: cache hit rates on a routing trace */
int cmd_replay(int argc, char **argv);

#endif
