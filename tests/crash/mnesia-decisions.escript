#!/usr/bin/env escript
%% mnesia-decisions.escript LOG QUEUE - what RabbitMQ's mnesia transaction
%% log (LATEST.LOG, as a SIGKILL left it) holds about the declaration of
%% queue QUEUE: the commit records that write it, with their transaction id
%% and the outcome they presume, and whether the "committed" decision for
%% that transaction is in the log too. mnesia, starting again, aborts a
%% presume-abort commit whose decision it cannot find: the queue is gone.
%%
%% The log is read from a copy (opening a log that was not closed repairs
%% it in place). Needs erlang-base, which RabbitMQ already pulls in.
%% Used with KEEP_MNESIA=DIR tests/crash/amqp-declare-kill.sh:
%%   escript tests/crash/mnesia-decisions.escript DIR/cycle-N/LATEST.LOG QUEUE
-mode(compile).

main([File, Queue]) ->
    logger:set_primary_config(level, warning), % not the repair notice
    Copy = filename:join(tmp_dir(), "ackbox-mnesia-" ++ os:getpid() ++ ".LOG"),
    {ok, _} = file:copy(File, Copy),
    Terms = read_log(Copy),
    ok = file:delete(Copy),
    Q = list_to_binary(Queue),
    Commits = [C || C <- Terms, is_tuple(C), element(1, C) =:= commit,
                    binary:match(term_to_binary(C), Q) =/= nomatch],
    Tids = [tid_of(C) || C <- Commits],
    Decided = [T || T <- Terms, is_tuple(T), element(1, T) =:= decision,
                    lists:member(element(2, T), Tids)],
    [io:format("commit ~p presumes ~p~n", [tid_of(C), presumed(C)]) || C <- Commits],
    [io:format("decision ~p ~p~n", [element(2, D), element(3, D)]) || D <- Decided],
    case {Commits, Decided} of
        {[], _} -> io:format("verdict: no commit record writes ~s~n", [Queue]);
        {_, []} -> io:format("verdict: commit without its decision: aborted at start~n");
        _ -> io:format("verdict: committed~n")
    end;
main(_) ->
    io:format(standard_error, "usage: mnesia-decisions.escript LOG QUEUE~n", []),
    halt(2).

tid_of(C) -> element(2, element(3, C)).
presumed(C) -> element(3, element(3, C)).

tmp_dir() ->
    case os:getenv("TMPDIR") of
        false -> "/tmp";
        D -> D
    end.

read_log(File) ->
    Name = list_to_atom("ackbox_log_" ++ os:getpid()),
    case disk_log:open([{name, Name}, {file, File}, {repair, true}]) of
        {ok, _} -> ok;
        {repaired, _, _, _} -> ok
    end,
    Terms = chunks(Name, start, []),
    disk_log:close(Name),
    Terms.

chunks(Log, Cont, Acc) ->
    case disk_log:chunk(Log, Cont) of
        eof -> lists:reverse(Acc);
        {error, _} -> lists:reverse(Acc);
        {Cont2, Terms} -> chunks(Log, Cont2, lists:reverse(Terms, Acc));
        {Cont2, Terms, _BadBytes} -> chunks(Log, Cont2, lists:reverse(Terms, Acc))
    end.
