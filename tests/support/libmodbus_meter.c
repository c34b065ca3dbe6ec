/* A Modbus RTU server built on libmodbus (the C library of many real meters' gateways and PLC tools), serving the
 * registers a text file lists: a Modbus peer that shares no code with pymodbus, which Koto's client and its
 * simulators use. Only the register image comes from Koto's tests (tests/support/vendor_meters.py, transcribed
 * from the vendors' documents); framing, CRC, timing and exception replies are libmodbus'.
 *
 *   libmodbus_meter DEVICE SLAVE_ID BAUD MAP_FILE
 *
 * MAP_FILE holds lines "i ADDRESS WORD" (input register, function 04) and "h ADDRESS WORD" (holding, 03/06),
 * decimal. It is read again whenever its modification time changes (write it elsewhere and rename it into place),
 * so a test can change a meter's readings between polls. A read of 03 or 04 that covers a register the file does not
 * list gets exception 02 (illegal data address), as a meter answers for a register it does not have; everything else
 * (other functions, counts out of range, requests for another slave, bad CRCs) is libmodbus' own behaviour.
 * Prints "ready" on stdout once the port is open; runs until killed. */
#include <errno.h>
#include <modbus.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#define N 65536

static unsigned char present_input[N], present_holding[N];

static int load(const char *path, modbus_mapping_t *map, struct timespec *seen) {
    struct stat st;
    if (stat(path, &st) != 0)
        return -1;
    if (st.st_mtim.tv_sec == seen->tv_sec && st.st_mtim.tv_nsec == seen->tv_nsec)
        return 0;
    FILE *f = fopen(path, "r");
    if (f == NULL)
        return -1;
    memset(present_input, 0, sizeof present_input);
    memset(present_holding, 0, sizeof present_holding);
    char kind;
    unsigned address, word;
    while (fscanf(f, " %c %u %u", &kind, &address, &word) == 3) {
        if (address >= N || word > 0xFFFF)
            continue;
        if (kind == 'i') {
            map->tab_input_registers[address] = (uint16_t)word;
            present_input[address] = 1;
        } else if (kind == 'h') {
            map->tab_registers[address] = (uint16_t)word;
            present_holding[address] = 1;
        }
    }
    fclose(f);
    *seen = st.st_mtim;
    return 0;
}

int main(int argc, char **argv) {
    if (argc != 5) {
        fprintf(stderr, "usage: %s DEVICE SLAVE_ID BAUD MAP_FILE\n", argv[0]);
        return 2;
    }
    modbus_t *ctx = modbus_new_rtu(argv[1], atoi(argv[3]), 'N', 8, 1);
    modbus_mapping_t *map = modbus_mapping_new_start_address(0, 0, 0, 0, 0, N, 0, N);
    struct timespec seen = {0, 0};
    if (ctx == NULL || map == NULL || load(argv[4], map, &seen) != 0) {
        fprintf(stderr, "libmodbus_meter: cannot start: %s\n", strerror(errno));
        return 1;
    }
    modbus_set_slave(ctx, atoi(argv[2]));
    if (modbus_connect(ctx) != 0) {
        fprintf(stderr, "libmodbus_meter: cannot open %s: %s\n", argv[1], modbus_strerror(errno));
        return 1;
    }
    printf("ready\n");
    fflush(stdout);
    int header = modbus_get_header_length(ctx);
    uint8_t query[MODBUS_RTU_MAX_ADU_LENGTH];
    for (;;) {
        int rc = modbus_receive(ctx, query);
        if (rc <= 0)
            continue; /* another slave's request (0), or a frame libmodbus refused (-1: bad CRC, too short) */
        load(argv[4], map, &seen);
        int function = query[header];
        if (function == 0x03 || function == 0x04) {
            int start = (query[header + 1] << 8) | query[header + 2];
            int count = (query[header + 3] << 8) | query[header + 4];
            const unsigned char *present = function == 0x04 ? present_input : present_holding;
            int missing = 0;
            for (int a = start; count >= 1 && count <= 125 && a < start + count; a++)
                missing |= a >= N || !present[a];
            if (missing) {
                modbus_reply_exception(ctx, query, MODBUS_EXCEPTION_ILLEGAL_DATA_ADDRESS);
                continue;
            }
        }
        modbus_reply(ctx, query, rc, map);
    }
}
