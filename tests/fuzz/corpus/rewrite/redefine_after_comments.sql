SELECT 1 /* ; */; -- x
 /* a /* b */ */ DEALLOCATE ALL; discard plans