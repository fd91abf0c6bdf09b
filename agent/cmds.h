/* cmds.h - entry points of nawal-agent's sub-commands. main.c dispatches on
 * argv[1] and calls one of these with argv shifted so that argv[0] is the
 * sub-command name. Each returns the process exit status (0 ok, 1 runtime
 * error, 2 usage error). */
#ifndef NAWAL_AGENT_CMDS_H
#define NAWAL_AGENT_CMDS_H

#include "ops.h"
#include "tokenizer.h"

int nawal_cmd_tokenizer(int argc, char **argv);
int nawal_cmd_train(int argc, char **argv);
int nawal_cmd_eval(int argc, char **argv);
int nawal_cmd_sample(int argc, char **argv);
int nawal_cmd_keygen(int argc, char **argv);
int nawal_cmd_privacy(int argc, char **argv);
int nawal_cmd_run(int argc, char **argv);

/* shared set-up (main.c): print an error and return -1 on failure */
int nawal_agent_open_device(const nawal_ops **ops, const char *device, int threads);
int nawal_agent_load_tokenizer(nawal_tokenizer **tok, const char *path);

#endif
