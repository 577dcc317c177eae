//! Shared test data: a table with a column of every built-in type family
//! (enum, domain and composite included) and rows covering ordinary
//! values, edge cases (NaN, infinities, empty arrays and ranges, quoting),
//! NULLs and an out-of-line TOASTed value. Used by the `tail` and `stream`
//! tests so both exercise the same values. Needs PostgreSQL 14+
//! (multiranges).

/// Columns of every built-in type family, with the values of three rows:
/// ordinary values, edge cases, and NULLs.
pub const ALL_TYPES_DDL: &str = "
    CREATE TYPE mood AS ENUM ('sad', 'ok', 'happy');
    CREATE DOMAIN posint AS int CHECK (VALUE > 0);
    CREATE TYPE complex AS (r float8, i float8);
    CREATE TABLE all_types (
        id int PRIMARY KEY,
        c_bool bool, c_int2 int2, c_int4 int4, c_int8 int8, c_float4 float4, c_float8 float8,
        c_numeric numeric, c_numeric_p numeric(12, 3), c_money money,
        c_char char(5), c_varchar varchar(10), c_text text, c_name name, c_bytea bytea,
        c_date date, c_time time, c_timetz timetz, c_ts timestamp, c_tstz timestamptz,
        c_interval interval,
        c_uuid uuid, c_inet inet, c_cidr cidr, c_macaddr macaddr, c_macaddr8 macaddr8,
        c_json json, c_jsonb jsonb, c_xml xml,
        c_int_arr int[], c_text_arr text[], c_2d_arr int[][], c_ts_arr timestamptz[],
        c_int4range int4range, c_numrange numrange, c_tstzrange tstzrange, c_daterange daterange,
        c_int4multirange int4multirange,
        c_enum mood, c_domain posint, c_composite complex,
        c_tsvector tsvector, c_tsquery tsquery,
        c_bit bit(8), c_varbit varbit,
        c_point point, c_line line, c_lseg lseg, c_box box, c_path path, c_polygon polygon,
        c_circle circle,
        c_oid oid, c_pg_lsn pg_lsn, c_regclass regclass,
        c_big text
    );
    ALTER TABLE all_types ALTER COLUMN c_big SET STORAGE EXTERNAL;";

pub const ALL_TYPES_ROWS: &str = "
    INSERT INTO all_types VALUES (
        1, true, 32767, -2147483648, 9223372036854775807, 3.14, -2.718281828459045,
        123456789012345678901234567890.123456789, 12.5, 1234.56,
        'ab', 'héllo', E'tab\\there \"quoted\" \\\\ back', 'a_name', '\\x00ff10',
        '2024-02-29', '23:59:59.999999', '12:00:00+05:30', '2024-01-01 00:00:00.5',
        '2024-06-01 12:34:56.789+02', '1 year 2 mons 3 days 04:05:06.7',
        'a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11', '192.168.0.1/24', '10.0.0.0/8',
        '08:00:2b:01:02:03', '08:00:2b:01:02:03:04:05',
        '{\"a\": [1, 2.50, null]}', '{\"b\": {\"c\": true}, \"a\": 1}', '<x a=\"1\">t&amp;</x>',
        '{1,NULL,3}', '{\"with space\",\"quote\\\"d\",NULL,\"\"}', '{{1,2},{3,4}}',
        '{\"2024-01-01 00:00:00+00\"}',
        '[1,10)', '(1.5,2.5]', '[2024-01-01 00:00+00,2024-02-01 00:00+00)', '[2024-01-01,2024-01-31]',
        '{[1,3),[5,7)}',
        'happy', 42, '(1.5,-2)',
        'the quick brown fox', 'fox & (dog | cat)',
        B'10101010', B'101',
        '(1,2)', '{1,-1,0}', '[(0,0),(1,1)]', '(1,1),(0,0)', '[(0,0),(1,1),(2,0)]',
        '((0,0),(1,1),(1,0))', '<(0,0),5>',
        4294967295, '16/B374D848', 'pg_class',
        (SELECT string_agg(md5(g::text), '') FROM generate_series(1, 4000) g)
    ), (
        2, false, -32768, 0, -1, 'NaN', '-Infinity',
        'NaN', -0.001, -0.01,
        '', '', '', '', '\\x',
        'infinity', '00:00', '00:00-12', '-infinity', 'infinity', '-178000000 years',
        '00000000-0000-0000-0000-000000000000', '::1', '2001:db8::/32', '00:00:00:00:00:00',
        '00:00:00:00:00:00:00:00',
        '[]', '[]', '<empty/>',
        '{}', '{}', '{}', '{}',
        'empty', '(,)', '(,)', 'empty',
        '{}',
        'sad', 1, '(0,0)',
        '', '!a',
        B'00000000', B'',
        '(0,0)', '{0,1,0}', '[(0,0),(0,0)]', '(0,0),(0,0)', '((0,0))', '((0,0))', '<(0,0),0>',
        0, '0/0', '-',
        ''
    );
    INSERT INTO all_types (id) VALUES (3);
    UPDATE all_types SET c_int4 = 7 WHERE id = 1;";
