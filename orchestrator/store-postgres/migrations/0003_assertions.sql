-- The writer's one-round-trip transactions (ADR 0029): a batch sends its
-- writes and COMMIT together, each check written as a statement that calls
-- this. A check that fails aborts the transaction before the COMMIT arrives
-- (which then rolls back), and the writer retries the batch on the path
-- that reads under lock and names the refused commit. SQLSTATE SF001 is
-- this function's alone.
CREATE FUNCTION sagaflow_assert(ok boolean, what text) RETURNS void
LANGUAGE plpgsql AS $$
BEGIN
    IF ok IS NOT TRUE THEN
        RAISE EXCEPTION 'sagaflow: % did not hold', what USING ERRCODE = 'SF001';
    END IF;
END
$$;
